// Package quota is the stage that enforces each tenant's daily sending
// limit (mail-rules §8). It consumes mail.rewritten.<tenant>, counts every
// mail against its tenant's current window in Redis and publishes it on
// mail.ready.<tenant> with its QuotaGrant, so the sender only ever sees
// mail that has its place in a window.
//
// Counting. A Counter keeps, per tenant and window, the count of granted
// mails and the set of their ids, changed only by one Lua script that is
// atomic and idempotent by mail id: a redelivered or retried mail is never
// counted twice, not even when the retry comes after midnight. The limit is the tenants file's daily_limit unless the
// Redis key OverrideKey(tenant) holds a runtime value. The grants that
// reach 80 % and 100 % of the limit are marked in Redis, so a QuotaEvent
// is published on events.quota.<tenant> once per window for each.
//
// Windows. A window is a calendar day in the tenant's time zone, 00:00 to
// 00:00 local (UTC by default); see WindowOf.
//
// Over the limit. A mail that does not fit is held, never dropped: a held
// MailEvent announces its release time (the next window's start) and the
// message stays unacknowledged in REWRITTEN until JetStream redelivers it
// then (see holdUntilNextWindow). This is the walking skeleton's holding
// place; a scheduler replaces it later.
//
// Failures. Quota fails closed: when Redis cannot answer, no mail is
// published to mail.ready; the input is redelivered with backoff until
// Redis is back, and Ready reports the outage.
package quota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage is the stage name in events, dead letters, the durable consumer
// and Nats-Msg-Id.
const Stage = "quota"

// Options configure a Service.
type Options struct {
	// Bus carries the mail; required.
	Bus *bus.Bus
	// Config gives each tenant's daily limit and time zone; required.
	Config *config.Config
	// Log is required.
	Log *slog.Logger
	// Redis holds the counters and overrides; required. A *redis.Client,
	// *redis.ClusterClient or a client of miniredis all work.
	Redis redis.UniversalClient
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Workers is how many mails are counted at once; default 8.
	Workers int
}

// Service is the quota stage.
type Service struct {
	o       Options
	counter *Counter
	// spread returns the random delay added to a held mail's wait, so that
	// a tenant's held mails do not all come back in the same instant.
	spread func() time.Duration
}

// ErrOverLimit is the reason a mail is held: its tenant's window is full.
var ErrOverLimit = errors.New("quota: daily limit reached")

// ReadyTimeout bounds the Redis PING of Ready.
const ReadyTimeout = 2 * time.Second

// MaxReleaseSpread bounds the random delay added to a held mail's release,
// after the next window opens.
const MaxReleaseSpread = time.Minute

// New returns a quota stage.
func New(o Options) (*Service, error) {
	if o.Bus == nil || o.Config == nil || o.Log == nil || o.Redis == nil {
		return nil, errors.New("quota: Bus, Config, Log and Redis are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	return &Service{
		o:       o,
		counter: NewCounter(o.Redis),
		spread:  func() time.Duration { return time.Duration(rand.Int64N(int64(MaxReleaseSpread))) },
	}, nil
}

// Run consumes mail.rewritten.* with the durable consumer "quota" until
// ctx is done.
func (s *Service) Run(ctx context.Context) error {
	return s.o.Bus.Consume(ctx, bus.ConsumerSpec{
		Stream:  bus.StreamRewritten,
		Durable: Stage,
		Stage:   Stage,
		Workers: s.o.Workers,
	}, s.handle)
}

// Ready pings Redis, waiting at most ReadyTimeout. It is the "redis"
// readiness check of the admin port.
func (s *Service) Ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), ReadyTimeout)
	defer cancel()
	if err := s.o.Redis.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("quota: redis: %w", err)
	}
	return nil
}

// handle counts one mail. Its result follows bus.Handler: invalid input
// is rejected (dead-lettered); a Redis or publish error is temporary, and
// the mail is redelivered with backoff without having reached mail.ready
// (fail closed); an over-limit mail is held until the next window.
func (s *Service) handle(ctx context.Context, d *bus.Delivery) error {
	var m cmv1.OutboundMail
	if err := proto.Unmarshal(d.Data, &m); err != nil {
		return bus.Reject(fmt.Errorf("quota: undecodable OutboundMail: %w", err))
	}
	t := s.o.Config.Tenant(m.GetTenant())
	if t == nil || m.GetTenant() != d.Tenant {
		return bus.Reject(fmt.Errorf("quota: unknown tenant %q on %s", m.GetTenant(), d.Subject))
	}
	if m.GetMailId() == "" {
		return bus.Reject(errors.New("quota: mail without mail_id"))
	}
	now := s.o.Now()
	w := WindowOf(t, now)
	a, err := s.counter.Admit(ctx, t.ID, w, m.GetMailId(), t.DailyLimit)
	if err != nil {
		return err
	}
	if !a.Allowed {
		return s.holdUntilNextWindow(ctx, &m, w, a, now)
	}
	m.Quota = &cmv1.QuotaGrant{
		Window:    a.Window,
		Used:      a.Used,
		Limit:     a.Limit,
		GrantedAt: timestamppb.New(now),
	}
	if err := s.o.Bus.Publish(ctx, bus.Subject(bus.ReadyPrefix, t.ID), &m, bus.MsgID(m.GetMailId(), Stage)); err != nil {
		return err
	}
	s.o.Log.Debug("mail granted", "tenant", t.ID, "mail_id", m.GetMailId(), "window", w.Name,
		"used", a.Used, "limit", a.Limit, "repeat", a.Repeat)
	return s.announceThresholds(ctx, t.ID, w, a, now)
}

// announceThresholds publishes a QuotaEvent on events.quota.<tenant> for
// each threshold (80 %, 100 %) that a's grant reached. The Counter reports
// a threshold for one mail per window only, and again when that mail is
// retried, so a crash between the grant and this publish cannot lose the
// event; the Nats-Msg-Id (tenant, window, percent) absorbs the repeat.
func (s *Service) announceThresholds(ctx context.Context, tenant string, w Window, a Admission, now time.Time) error {
	for _, th := range []struct {
		reached bool
		percent int32
	}{{a.Crossed80, 80}, {a.Reached100, 100}} {
		if !th.reached {
			continue
		}
		ev := &cmv1.QuotaEvent{
			Tenant:   tenant,
			Window:   w.Name,
			Used:     a.Used,
			Limit:    a.Limit,
			Percent:  th.percent,
			At:       timestamppb.New(now),
			ResetsAt: timestamppb.New(w.End),
		}
		id := bus.MsgID(tenant+":"+w.Name+":"+strconv.Itoa(int(th.percent)), Stage)
		if err := s.o.Bus.Publish(ctx, bus.Subject(bus.QuotaEventPrefix, tenant), ev, id); err != nil {
			return err
		}
		if !a.Repeat {
			s.o.Log.Info("quota threshold reached", "tenant", tenant, "window", w.Name,
				"percent", th.percent, "used", a.Used, "limit", a.Limit, "resets_at", w.End)
		}
	}
	return nil
}

// holdUntilNextWindow holds an over-limit mail the walking skeleton's way:
// it publishes a held MailEvent whose release_at is the next window's
// start, then leaves the message unacknowledged in REWRITTEN and asks
// JetStream to redeliver it then, plus a random spread of up to
// MaxReleaseSpread (bus.RetryAfter → NakWithDelay). On redelivery the mail
// is counted against the new window like any other.
//
// Known limits, for the scheduler that replaces this: release order is not
// kept (the spread reorders a tenant's held mails), and every held mail
// stays pending on the durable consumer, so a very large backlog of held
// mail reaches the consumer's MaxAckPending and slows every tenant.
func (s *Service) holdUntilNextWindow(ctx context.Context, m *cmv1.OutboundMail, w Window, a Admission, now time.Time) error {
	release := w.End
	ev := events.ForMail(m, cmv1.Outcome_OUTCOME_HELD, Stage)
	ev.At = timestamppb.New(now)
	ev.ReleaseAt = timestamppb.New(release)
	ev.Reason = fmt.Sprintf("daily limit of %d reached in window %s (%d used); held until the next window opens at %s",
		a.Limit, w.Name, a.Used, release.Format(time.RFC3339))
	if err := events.PublishMail(ctx, s.o.Bus, ev); err != nil {
		return err
	}
	s.o.Log.Info("mail held: daily limit reached", "tenant", m.GetTenant(), "mail_id", m.GetMailId(),
		"window", w.Name, "used", a.Used, "limit", a.Limit, "release_at", release)
	return bus.RetryAfter(fmt.Errorf("%w: tenant %s, window %s", ErrOverLimit, m.GetTenant(), w.Name),
		release.Sub(now)+s.spread())
}
