package quota

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// HeldKey is the Redis sorted set of tenant's held line: the ids of the
// mails waiting for room in a window, scored by arrival number, so the
// line is released in arrival order.
func HeldKey(tenant string) string { return "cm:{" + tenant + "}:held" }

// PacedKey is the Redis sorted set of tenant's paced line: granted mails
// waiting for their pacing slot, scored by due time (Unix ms).
func PacedKey(tenant string) string { return "cm:{" + tenant + "}:paced" }

// ReleasingKey is the Redis sorted set of tenant's releasing line: granted
// mails a scheduler pass is publishing, scored by the end of its lease
// (Unix ms). A mail whose lease ends is taken again by the next pass.
func ReleasingKey(tenant string) string { return "cm:{" + tenant + "}:releasing" }

// StoredKey is the Redis hash that maps the id of each mail in one of
// tenant's lines to its sequence in the HELD stream, where its payload
// is; "" while it is being stored.
func StoredKey(tenant string) string { return "cm:{" + tenant + "}:stored" }

// GrantsKey is the Redis hash of the grants of the mails in tenant's paced
// and releasing lines (see Grant).
func GrantsKey(tenant string) string { return "cm:{" + tenant + "}:grants" }

// arrivalsKey numbers tenant's held line.
func arrivalsKey(tenant string) string { return "cm:{" + tenant + "}:arrivals" }

// GateKey is the Redis key of the time (Unix ms) before which no held mail
// of tenant is released: each released batch closes it for a while.
func GateKey(tenant string) string { return "cm:{" + tenant + "}:gate" }

// KeyMargin is how long a window's keys outlive the window: long enough
// for the whole next window, where a mail granted just before midnight and
// retried after it is recognised (see Admit), and for operators to read
// yesterday's count.
const KeyMargin = 24 * time.Hour

var (
	//go:embed grant.lua
	grantLua string
	//go:embed admit.lua
	admitLua string
	//go:embed release.lua
	releaseLua string
	//go:embed locate.lua
	locateLua string
	//go:embed park.lua
	parkLua string
	//go:embed done.lua
	doneLua string
)

// Line names the line a waiting mail is in.
type Line int

const (
	// NoLine: the mail waits in no line.
	NoLine Line = iota
	// HeldLine: over the daily limit, waiting for room in a window.
	HeldLine
	// PacedLine: granted, waiting for its pacing slot.
	PacedLine
	// ReleasingLine: granted, being published by a scheduler pass.
	ReleasingLine
)

func (l Line) String() string {
	switch l {
	case HeldLine:
		return "held"
	case PacedLine:
		return "paced"
	case ReleasingLine:
		return "releasing"
	}
	return "none"
}

// Admission is the Ledger's answer for one mail.
type Admission struct {
	// Window names the window the mail is counted in: the window asked
	// for, or the one before it for a mail granted there and retried
	// after midnight.
	Window string
	// Allowed is true when the mail has its place in the window (granted
	// now or by an earlier call for the same mail id) and waits in no
	// line: the caller publishes it.
	Allowed bool
	// Line is the line the mail waits in when it is not Allowed: HeldLine
	// for mail over the limit (put there by this call unless Repeat), or
	// PacedLine and ReleasingLine for granted mail the scheduler has.
	Line Line
	// Used is the tenant's count in the window after this call.
	Used int64
	// Limit is the limit that applied: the override when set, else the
	// tenants file's value.
	Limit int64
	// Repeat is true when the mail id was known already: granted in the
	// window or in the one before it, or in a line. Nothing was counted
	// this time.
	Repeat bool
	// Crossed80 is true when this mail's grant is the one that reached
	// 80 % of the limit in this window (also on a Repeat of that grant).
	Crossed80 bool
	// Reached100 is true when this mail's grant is the one that reached
	// 100 % of the limit in this window (also on a Repeat of that grant).
	Reached100 bool
	// Stored is the mail's sequence in the HELD stream when it waits in a
	// line and is stored there; 0 when it is not stored yet.
	Stored uint64
	// Position is the mail's 1-based place in the held line (HeldLine).
	Position int64
	// Waiting is the length of the held line.
	Waiting int64
}

// Grant is how a mail of the paced or releasing line was granted; the
// scheduler copies it into the mail's QuotaGrant.
type Grant struct {
	// Window, Used and Limit are as in Admission.
	Window string
	Used   int64
	Limit  int64
	// Crossed80 and Reached100 are the thresholds this grant reached and
	// that are not announced yet.
	Crossed80  bool
	Reached100 bool
	// Held is true when the mail waited in the held line.
	Held bool
	// Paced is true when the mail's pacing slot is reserved already.
	Paced bool
}

func (g Grant) encode() string {
	flags := 0
	for i, b := range []bool{g.Crossed80, g.Reached100, g.Held, g.Paced} {
		if b {
			flags |= 1 << i
		}
	}
	return fmt.Sprintf("%s %d %d %d", g.Window, g.Used, g.Limit, flags)
}

func parseGrant(s string) (Grant, error) {
	f := strings.Fields(s)
	if len(f) != 4 {
		return Grant{}, fmt.Errorf("%w: grant %q", ErrLedger, s)
	}
	used, err1 := strconv.ParseInt(f[1], 10, 64)
	limit, err2 := strconv.ParseInt(f[2], 10, 64)
	flags, err3 := strconv.Atoi(f[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return Grant{}, fmt.Errorf("%w: grant %q: %w", ErrLedger, s, err)
	}
	return Grant{Window: f[0], Used: used, Limit: limit,
		Crossed80: flags&1 != 0, Reached100: flags&2 != 0, Held: flags&4 != 0, Paced: flags&8 != 0}, nil
}

// Ledger is the quota engine in Redis: per tenant and window a count of
// granted mails, and per tenant three lines of waiting mail (held, paced,
// releasing; see the package doc). Every change is made by a Lua script
// that is atomic and idempotent by mail id. It is safe for concurrent use,
// from any number of processes sharing one Redis.
//
// Scripts run with EVALSHA, falling back to EVAL when the server does not
// know them (after a restart or SCRIPT FLUSH). They use only commands
// miniredis implements, so the local all-in-one can run them in process.
type Ledger struct {
	rdb                                 redis.UniversalClient
	admit, release, locate, park, done_ *redis.Script
}

// NewLedger returns a Ledger on rdb.
func NewLedger(rdb redis.UniversalClient) *Ledger {
	return &Ledger{
		rdb:     rdb,
		admit:   redis.NewScript(grantLua + admitLua),
		release: redis.NewScript(grantLua + releaseLua),
		locate:  redis.NewScript(locateLua),
		park:    redis.NewScript(parkLua),
		done_:   redis.NewScript(doneLua),
	}
}

// ErrLedger wraps every error of the Ledger: Redis unreachable, a script
// error, or a limit override that is not a non-negative integer. All are
// temporary from a mail's point of view: it waits, it is never granted
// without the Ledger's answer.
var ErrLedger = errors.New("quota: ledger")

// windowTTL is how long the keys of window w live, in seconds.
func windowTTL(w Window) int64 {
	return int64((w.End.Sub(w.Start) + KeyMargin + time.Second - 1) / time.Second)
}

// Admit grants mailID a place in tenant's window w when the count is
// below the limit and no older mail waits in the held line, and counts
// it; otherwise it puts mailID at the end of the held line. A mail id
// already granted in w, or in the window before w (a retry that crossed
// midnight), is allowed again without being counted; a mail id already
// in a line is reported there. limit is the tenants file's daily limit;
// OverrideKey(tenant) wins over it when set. w.Start must carry the
// tenant's location, as WindowOf's does: the previous window is named
// after the local date just before it.
//
// A held mail is not stored yet (Stored is 0): the caller stores its
// payload in the HELD stream and records where with Locate.
func (l *Ledger) Admit(ctx context.Context, tenant string, w Window, mailID string, limit int) (Admission, error) {
	if mailID == "" {
		return Admission{}, fmt.Errorf("%w: empty mail id", ErrLedger)
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
		HeldKey(tenant),
		PacedKey(tenant),
		ReleasingKey(tenant),
		StoredKey(tenant),
		arrivalsKey(tenant),
	}
	res, err := l.admit.Run(ctx, l.rdb, keys, mailID, limit, windowTTL(w)).Slice()
	if err != nil {
		return Admission{}, fmt.Errorf("%w: admit %s for %s in %s: %w", ErrLedger, mailID, tenant, w.Name, err)
	}
	if len(res) != 10 {
		return Admission{}, fmt.Errorf("%w: admit script returned %d values, want 10", ErrLedger, len(res))
	}
	n := make([]int64, 10)
	for i, v := range res {
		if i != 7 {
			n[i], _ = v.(int64)
		}
	}
	stored, err := parseSeq(res[7])
	if err != nil {
		return Admission{}, err
	}
	a := Admission{
		Window:     w.Name,
		Used:       n[1],
		Limit:      n[2],
		Repeat:     n[3] == 1,
		Crossed80:  n[4] == 1,
		Reached100: n[5] == 1,
		Stored:     stored,
		Position:   n[8],
		Waiting:    n[9],
	}
	if n[6] == 1 {
		a.Window = prev
	}
	switch n[0] {
	case 1:
		a.Allowed = true
	case 2:
		a.Line = HeldLine
	case 3:
		a.Line = PacedLine
	case 4:
		a.Line = ReleasingLine
	default:
		return Admission{}, fmt.Errorf("%w: admit script returned state %d", ErrLedger, n[0])
	}
	return a, nil
}

// parseSeq reads a HELD stream sequence answered by a script: "" or a
// decimal number.
func parseSeq(v any) (uint64, error) {
	s, _ := v.(string)
	if s == "" {
		return 0, nil
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: stored sequence %q: %w", ErrLedger, s, err)
	}
	return seq, nil
}

// Locate records that mailID, waiting in tenant's held or paced line, is
// stored at seq in the HELD stream. The first sequence recorded wins: it
// returns the sequence on record, which differs from seq when the mail
// was stored twice, and 0 when the mail is in neither line any more.
// releasable is true when a scheduler pass could release the mail now:
// it is paced and due, or held and window w (the current one) has room.
// limit is the tenants file's daily limit.
func (l *Ledger) Locate(ctx context.Context, tenant string, w Window, mailID string, seq uint64, now time.Time, limit int) (stored uint64, releasable bool, err error) {
	keys := []string{HeldKey(tenant), PacedKey(tenant), StoredKey(tenant), CounterKey(tenant, w.Name), OverrideKey(tenant)}
	res, err := l.locate.Run(ctx, l.rdb, keys, mailID, seq, now.UnixMilli(), limit).Slice()
	if err != nil {
		return 0, false, fmt.Errorf("%w: locate %s of %s: %w", ErrLedger, mailID, tenant, err)
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("%w: locate script returned %d values, want 2", ErrLedger, len(res))
	}
	stored, err = parseSeq(res[0])
	r, _ := res[1].(int64)
	return stored, r == 1, err
}

// Park puts mailID, granted as g, in tenant's paced line until due; a
// mail in the releasing line leaves it. A mail already in the paced line
// keeps its due time. It returns the mail's HELD sequence, 0 when it is
// not stored yet: the caller then stores it and calls Locate.
func (l *Ledger) Park(ctx context.Context, tenant, mailID string, due time.Time, g Grant) (uint64, error) {
	keys := []string{PacedKey(tenant), ReleasingKey(tenant), StoredKey(tenant), GrantsKey(tenant)}
	res, err := l.park.Run(ctx, l.rdb, keys, mailID, due.UnixMilli(), g.encode()).Result()
	if err != nil {
		return 0, fmt.Errorf("%w: park %s of %s: %w", ErrLedger, mailID, tenant, err)
	}
	return parseSeq(res)
}

// Waiting is one mail a scheduler pass is to publish.
type Waiting struct {
	// ID is the mail id.
	ID string
	// Stored is the mail's sequence in the HELD stream.
	Stored uint64
	// Grant is the mail's grant.
	Grant Grant
}

// Batch is the answer of Release.
type Batch struct {
	// Mails are the mails to publish now, in the order they were taken:
	// expired leases first, then due paced mail, then held mail in
	// arrival order. They are in the releasing line until Done.
	Mails []Waiting
	// Held, Paced and Releasing are the lines' lengths after the call.
	Held, Paced, Releasing int64
	// Used and Limit are the window's count and limit after the call.
	Used, Limit int64
	// NextPaced is the first due time in the paced line; zero when empty.
	NextPaced time.Time
	// NextLease is the first lease end in the releasing line; zero when
	// empty.
	NextLease time.Time
	// Gate is the time before which no more held mail is released.
	Gate time.Time
}

// ReleaseOptions pace a Release.
type ReleaseOptions struct {
	// Batch bounds the mails taken; required, positive.
	Batch int
	// Interval is how long the release gate closes after held mail was
	// released.
	Interval time.Duration
	// Lease is how long the mails taken stay in the releasing line before
	// another pass may take them again.
	Lease time.Duration
}

// Release takes the mails tenant may publish now (at most o.Batch): mails
// of the releasing line whose lease ended, due mails of the paced line,
// and held mails in arrival order, granted in window w as far as it has
// room and the release gate is open. Each moves to the releasing line
// with a lease of o.Lease; the caller publishes it and calls Done. limit
// is the tenants file's daily limit.
func (l *Ledger) Release(ctx context.Context, tenant string, w Window, limit int, now time.Time, o ReleaseOptions) (Batch, error) {
	keys := []string{
		CounterKey(tenant, w.Name),
		GrantedKey(tenant, w.Name),
		OverrideKey(tenant),
		NotifiedKey(tenant, w.Name, 80),
		NotifiedKey(tenant, w.Name, 100),
		HeldKey(tenant),
		PacedKey(tenant),
		ReleasingKey(tenant),
		StoredKey(tenant),
		GrantsKey(tenant),
		GateKey(tenant),
	}
	res, err := l.release.Run(ctx, l.rdb, keys, now.UnixMilli(), w.Name, limit, windowTTL(w),
		max(o.Batch, 1), o.Interval.Milliseconds(), max(o.Lease.Milliseconds(), 1)).Slice()
	if err != nil {
		return Batch{}, fmt.Errorf("%w: release for %s in %s: %w", ErrLedger, tenant, w.Name, err)
	}
	if len(res) != 9 {
		return Batch{}, fmt.Errorf("%w: release script returned %d values, want 9", ErrLedger, len(res))
	}
	n := make([]int64, 9)
	for i := 1; i < 9; i++ {
		n[i], _ = res[i].(int64)
	}
	b := Batch{Held: n[1], Paced: n[2], Releasing: n[3], Used: n[4], Limit: n[5],
		NextPaced: msTime(n[6]), NextLease: msTime(n[7]), Gate: msTime(n[8])}
	list, _ := res[0].([]any)
	for _, item := range list {
		f, _ := item.([]any)
		if len(f) != 3 {
			return Batch{}, fmt.Errorf("%w: release script returned a mail of %d fields, want 3", ErrLedger, len(f))
		}
		id, _ := f[0].(string)
		seq, err := parseSeq(f[1])
		if err != nil {
			return Batch{}, err
		}
		gs, _ := f[2].(string)
		g, err := parseGrant(gs)
		if err != nil {
			return Batch{}, err
		}
		b.Mails = append(b.Mails, Waiting{ID: id, Stored: seq, Grant: g})
	}
	return b, nil
}

// msTime is the time of Unix ms, zero for a negative value.
func msTime(ms int64) time.Time {
	if ms < 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// Done forgets mails of tenant's releasing line once their publication
// is confirmed; ids no longer in that line are skipped. It returns how
// many were forgotten.
func (l *Ledger) Done(ctx context.Context, tenant string, ids []string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	n, err := l.done_.Run(ctx, l.rdb, []string{ReleasingKey(tenant), StoredKey(tenant), GrantsKey(tenant)}, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("%w: done for %s: %w", ErrLedger, tenant, err)
	}
	return n, nil
}

// Expire ends the lease of mails of tenant's releasing line whose
// publication failed, so that the next pass takes them again.
func (l *Ledger) Expire(ctx context.Context, tenant string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	members := make([]redis.Z, len(ids))
	for i, id := range ids {
		members[i] = redis.Z{Score: 0, Member: id}
	}
	if err := l.rdb.ZAddXX(ctx, ReleasingKey(tenant), members...).Err(); err != nil {
		return fmt.Errorf("%w: expire for %s: %w", ErrLedger, tenant, err)
	}
	return nil
}

// Used returns tenant's count in the window named window (0 when nothing
// was granted in it).
func (l *Ledger) Used(ctx context.Context, tenant, window string) (int64, error) {
	n, err := l.rdb.Get(ctx, CounterKey(tenant, window)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: read %s: %w", ErrLedger, CounterKey(tenant, window), err)
	}
	return n, nil
}
