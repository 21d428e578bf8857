package quota

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keys. Every key of a tenant carries the hash tag {<tenant>}, so
// they all live in one Redis Cluster slot and one script may touch them
// together.

// CounterKey is the Redis key of tenant's count of granted mails in the
// window named window, for example "cm:{acme}:quota:2026-11-24".
func CounterKey(tenant, window string) string {
	return "cm:{" + tenant + "}:quota:" + window
}

// GrantedKey is the Redis set of the mail ids granted in a window; it
// makes a grant idempotent by mail id.
func GrantedKey(tenant, window string) string {
	return CounterKey(tenant, window) + ":granted"
}

// NotifiedKey is the Redis key that records which mail's grant reached
// percent (80 or 100) of the limit in a window, so that the quota event is
// announced once per window.
func NotifiedKey(tenant, window string, percent int) string {
	return CounterKey(tenant, window) + ":notified:" + strconv.Itoa(percent)
}

// OverrideKey is the Redis key of tenant's runtime daily limit, for example
// "cm:{acme}:limit". When it holds a non-negative integer it wins over the
// tenants file's daily_limit until it is deleted (mail-rules §1, §8).
func OverrideKey(tenant string) string {
	return "cm:{" + tenant + "}:limit"
}

// KeyMargin is how long a window's keys outlive the window: long enough
// for the whole next window, where a mail granted just before midnight and
// retried after it is recognised (see Admit), and for operators to read
// yesterday's count.
const KeyMargin = 24 * time.Hour

//go:embed admit.lua
var admitLua string

// Admission is the Counter's answer for one mail.
type Admission struct {
	// Window names the window the mail is counted in: the window asked
	// for, or the one before it for a mail granted there and retried
	// after midnight.
	Window string
	// Allowed is true when the mail has its place in the window: granted
	// now or by an earlier call for the same mail id.
	Allowed bool
	// Used is the tenant's count in the window after this call.
	Used int64
	// Limit is the limit that applied: the override when set, else the
	// tenants file's value.
	Limit int64
	// Repeat is true when the mail id had already been granted, in the
	// window or in the one before it; nothing was counted this time.
	Repeat bool
	// Crossed80 is true when this mail's grant is the one that reached
	// 80 % of the limit in this window (also on a Repeat of that grant).
	Crossed80 bool
	// Reached100 is true when this mail's grant is the one that reached
	// 100 % of the limit in this window (also on a Repeat of that grant).
	Reached100 bool
}

// Counter is the quota engine: per tenant and window, a count of granted
// mails kept in Redis and changed only by one Lua script, which is atomic
// and idempotent by mail id. It is safe for concurrent use, from any
// number of processes sharing one Redis.
//
// The script runs with EVALSHA, falling back to EVAL when the server does
// not know it (after a restart or SCRIPT FLUSH). It uses only commands
// miniredis implements, so the local all-in-one can run it in process.
type Counter struct {
	rdb    redis.UniversalClient
	script *redis.Script
}

// NewCounter returns a Counter on rdb.
func NewCounter(rdb redis.UniversalClient) *Counter {
	return &Counter{rdb: rdb, script: redis.NewScript(admitLua)}
}

// ErrCounter wraps every error of the Counter: Redis unreachable, a script
// error, or a limit override that is not a non-negative integer. All are
// temporary from a mail's point of view: it waits, it is never granted
// without the Counter's answer.
var ErrCounter = errors.New("quota: counter")

// Admit grants mailID a place in tenant's window w when the count is below
// the limit, and counts it. A mail id already granted in w, or in the
// window before w (a retry that crossed midnight), is allowed again
// without being counted. limit is the tenants file's daily limit;
// OverrideKey(tenant) wins over it when set. w.Start must carry the
// tenant's location, as WindowOf's does: the previous window is named
// after the local date just before it.
func (c *Counter) Admit(ctx context.Context, tenant string, w Window, mailID string, limit int) (Admission, error) {
	if mailID == "" {
		return Admission{}, fmt.Errorf("%w: empty mail id", ErrCounter)
	}
	prev := w.Start.Add(-time.Nanosecond).Format(time.DateOnly)
	keys := []string{
		CounterKey(tenant, w.Name),
		GrantedKey(tenant, w.Name),
		OverrideKey(tenant),
		NotifiedKey(tenant, w.Name, 80),
		NotifiedKey(tenant, w.Name, 100),
		GrantedKey(tenant, prev),
		CounterKey(tenant, prev),
	}
	ttl := int64((w.End.Sub(w.Start) + KeyMargin + time.Second - 1) / time.Second)
	res, err := c.script.Run(ctx, c.rdb, keys, mailID, limit, ttl).Int64Slice()
	if err != nil {
		return Admission{}, fmt.Errorf("%w: admit %s for %s in %s: %w", ErrCounter, mailID, tenant, w.Name, err)
	}
	if len(res) != 7 {
		return Admission{}, fmt.Errorf("%w: admit script returned %d values, want 7", ErrCounter, len(res))
	}
	window := w.Name
	if res[6] == 1 {
		window = prev
	}
	return Admission{
		Window:     window,
		Allowed:    res[0] == 1,
		Used:       res[1],
		Limit:      res[2],
		Repeat:     res[3] == 1,
		Crossed80:  res[4] == 1,
		Reached100: res[5] == 1,
	}, nil
}

// Used returns tenant's count in the window named window (0 when nothing
// was granted in it).
func (c *Counter) Used(ctx context.Context, tenant, window string) (int64, error) {
	n, err := c.rdb.Get(ctx, CounterKey(tenant, window)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: read %s: %w", ErrCounter, CounterKey(tenant, window), err)
	}
	return n, nil
}
