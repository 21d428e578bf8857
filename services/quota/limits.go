package quota

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/redis/go-redis/v9"
)

// LimitChannel is the Redis pub/sub channel on which SetLimit and
// ClearLimit announce a changed limit; the message is the tenant id. Every
// running quota service listens and looks at that tenant's held line
// within a tick, so raising a limit releases waiting mail within seconds.
// A missed message (the subscriber was reconnecting) costs at most the
// scheduler's sweep interval.
const LimitChannel = "cm:quota:limit-changed"

// MaxLimit bounds a runtime limit.
const MaxLimit = 1_000_000_000

// ErrBadLimit is returned for a runtime limit out of [0, MaxLimit].
var ErrBadLimit = fmt.Errorf("quota: a daily limit must be an integer from 0 to %d", MaxLimit)

// SetLimit sets tenant's runtime daily limit to n (OverrideKey). It wins
// over the tenants file from the next admission on, in the current window
// and every later one, until ClearLimit. A running service is told on
// LimitChannel; with room in the window its held mail is released at
// once. 0 holds all of the tenant's mail.
func (l *Ledger) SetLimit(ctx context.Context, tenant string, n int64) error {
	if n < 0 || n > MaxLimit {
		return fmt.Errorf("%w: %d", ErrBadLimit, n)
	}
	if err := l.rdb.Set(ctx, OverrideKey(tenant), n, 0).Err(); err != nil {
		return fmt.Errorf("%w: set limit of %s: %w", ErrLedger, tenant, err)
	}
	l.announce(ctx, tenant)
	return nil
}

// ClearLimit removes tenant's runtime daily limit: the tenants file's
// daily_limit applies again. A running service is told on LimitChannel.
func (l *Ledger) ClearLimit(ctx context.Context, tenant string) error {
	if err := l.rdb.Del(ctx, OverrideKey(tenant)).Err(); err != nil {
		return fmt.Errorf("%w: clear limit of %s: %w", ErrLedger, tenant, err)
	}
	l.announce(ctx, tenant)
	return nil
}

// announce tells running services that tenant's limit changed. It is best
// effort: the change itself is stored, and the scheduler's sweep finds it.
func (l *Ledger) announce(ctx context.Context, tenant string) {
	_ = l.rdb.Publish(ctx, LimitChannel, tenant).Err()
}

// Limit sources of Status.LimitSource.
const (
	// LimitFromFile: the tenants file's daily_limit applies.
	LimitFromFile = "file"
	// LimitFromOverride: a runtime limit (SetLimit) applies.
	LimitFromOverride = "override"
)

// Status is a tenant's quota at one instant, as "chattermail quota status"
// and the admin endpoint GET /quota/{tenant} show it.
type Status struct {
	Tenant string `json:"tenant"`
	// Window names the current window; WindowStart and ResetsAt bound it,
	// in the tenant's time zone TimeZone.
	Window      string    `json:"window"`
	TimeZone    string    `json:"time_zone"`
	WindowStart time.Time `json:"window_start"`
	ResetsAt    time.Time `json:"resets_at"`
	// Used is the count of granted mails in the window.
	Used int64 `json:"used"`
	// Limit is the limit that applies, from LimitSource: "override" (a
	// runtime value, Override) or "file" (FileLimit).
	Limit       int64  `json:"limit"`
	LimitSource string `json:"limit_source"`
	FileLimit   int64  `json:"file_limit"`
	Override    *int64 `json:"override,omitempty"`
	// Waiting counts the held mails, waiting for room in a window.
	Waiting int64 `json:"waiting"`
	// Paced counts granted mails waiting for their pacing slot.
	Paced int64 `json:"paced"`
	// Releasing counts mails being published.
	Releasing int64 `json:"releasing"`
	// NextRelease is when the first held mail is planned to be released:
	// zero when none waits or when the limit is 0; NextReleaseReason says
	// why, in words.
	NextRelease       time.Time `json:"next_release,omitzero"`
	NextReleaseReason string    `json:"next_release_reason"`
}

// Status reads t's quota at now. The values are read together but not
// atomically; each is exact at the time it is read.
func (l *Ledger) Status(ctx context.Context, t *config.Tenant, now time.Time) (Status, error) {
	w := WindowOf(t, now)
	st := Status{
		Tenant: t.ID, Window: w.Name, TimeZone: t.Location().String(),
		WindowStart: w.Start.In(t.Location()), ResetsAt: w.End.In(t.Location()),
		Limit: int64(t.DailyLimit), LimitSource: LimitFromFile, FileLimit: int64(t.DailyLimit),
	}
	p := l.rdb.Pipeline()
	used := p.Get(ctx, CounterKey(t.ID, w.Name))
	override := p.Get(ctx, OverrideKey(t.ID))
	held := p.ZCard(ctx, HeldKey(t.ID))
	paced := p.ZCard(ctx, PacedKey(t.ID))
	releasing := p.ZCard(ctx, ReleasingKey(t.ID))
	gate := p.Get(ctx, GateKey(t.ID))
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Status{}, fmt.Errorf("%w: status of %s: %w", ErrLedger, t.ID, err)
	}
	st.Used, _ = used.Int64()
	if v, err := override.Result(); err == nil {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return Status{}, fmt.Errorf("%w: %s is %q, not a non-negative integer", ErrLedger, OverrideKey(t.ID), v)
		}
		st.Override, st.Limit, st.LimitSource = &n, n, LimitFromOverride
	}
	st.Waiting, st.Paced, st.Releasing = held.Val(), paced.Val(), releasing.Val()
	gateMS, _ := gate.Int64()
	switch {
	case st.Waiting == 0:
		st.NextReleaseReason = "no mail is held"
	case st.Limit == 0:
		st.NextReleaseReason = "the limit is 0: held mail waits until it is raised"
	case st.Used < st.Limit:
		st.NextRelease = now
		if g := time.UnixMilli(gateMS); g.After(now) {
			st.NextRelease = g
		}
		st.NextRelease = st.NextRelease.In(t.Location())
		st.NextReleaseReason = "the window has room: held mail is being released"
	default:
		st.NextRelease = w.End.In(t.Location())
		st.NextReleaseReason = "the window is full: held mail is released when the next window opens"
	}
	return st, nil
}
