package quota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	"github.com/chattermail/chattermail/platform/proc"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage is the stage name in events, dead letters, the durable consumer
// and Nats-Msg-Id.
const Stage = "quota"

// heldStage names the HELD copy of a mail in its Nats-Msg-Id.
const heldStage = Stage + "-held"

// Options configure a Service.
type Options struct {
	// Bus carries the mail; required.
	Bus *bus.Bus
	// Config gives each tenant's daily limit, time zone and pacing rules;
	// required.
	Config *config.Config
	// Log is required.
	Log *slog.Logger
	// Redis holds the counters, overrides, lines and pacing; required. A
	// *redis.Client, *redis.ClusterClient or a client of miniredis all
	// work.
	Redis redis.UniversalClient
	// Now is the clock of admission and scheduling; default time.Now.
	Now func() time.Time
	// Workers is how many mails are counted at once; default 8.
	Workers int
	// RetryBackoff is the delay before a mail whose handling failed
	// (Redis or NATS unavailable) is tried again; default the bus's,
	// ExponentialBackoff(1s, 5m).
	RetryBackoff bus.Backoff
	// ReleaseBatch is how many held mails of one tenant a scheduler pass
	// releases at most; default 50.
	ReleaseBatch int
	// ReleaseInterval is how long, by Now, a tenant's release gate stays
	// closed after a batch of held mail; default 1s. With the default
	// batch a tenant's held mail leaves at up to 50 mails a second.
	ReleaseInterval time.Duration
	// Tick is how often, in real time, the scheduler looks for tenants
	// whose pass is due; default 500ms.
	Tick time.Duration
	// Sweep bounds, by Now, the time between two passes over a tenant;
	// default 1 minute. It catches a limit change whose notice was
	// missed.
	Sweep time.Duration
	// Lease is how long, by Now, a pass may take to publish a mail it took
	// before another pass takes it again; default 1 minute.
	Lease time.Duration
	// ReleaseWorkers is how many mails a pass publishes at once; default 16.
	ReleaseWorkers int
	// RedisTimeout bounds each Redis call; default 2s. A call that takes
	// longer fails and is retried later (the client needs
	// ContextTimeoutEnabled for the bound to cut a blocked call short;
	// otherwise its ReadTimeout, 3s by default, does).
	RedisTimeout time.Duration
	// AdminToken is the bearer token AdminHandler requires. When empty,
	// AdminHandler refuses every request (403), except from a loopback
	// address when AdminLoopback is set.
	AdminToken string
	// AdminLoopback lets AdminHandler serve loopback clients without a
	// token while AdminToken is empty: for chattermail dev only.
	AdminLoopback bool
}

// Service is the quota stage.
type Service struct {
	o      Options
	ledger *Ledger
	pacer  *Pacer
	sched  *scheduler

	mu   sync.Mutex
	held jetstream.Stream
}

// ReadyTimeout bounds the Redis PING of Ready.
const ReadyTimeout = 2 * time.Second

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
	if o.ReleaseBatch <= 0 {
		o.ReleaseBatch = 50
	}
	if o.ReleaseInterval <= 0 {
		o.ReleaseInterval = time.Second
	}
	if o.Tick <= 0 {
		o.Tick = 500 * time.Millisecond
	}
	if o.Sweep <= 0 {
		o.Sweep = time.Minute
	}
	if o.Lease <= 0 {
		o.Lease = time.Minute
	}
	if o.ReleaseWorkers <= 0 {
		o.ReleaseWorkers = 16
	}
	if o.RedisTimeout <= 0 {
		o.RedisTimeout = 2 * time.Second
	}
	s := &Service{o: o, ledger: NewLedger(o.Redis), pacer: NewPacer(o.Redis, o.Config)}
	s.sched = newScheduler(s)
	return s, nil
}

// Ledger returns the service's Ledger.
func (s *Service) Ledger() *Ledger { return s.ledger }

// Run consumes mail.rewritten.* with the durable consumer "quota", runs
// the scheduler and listens for limit changes until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	return proc.RunAll(ctx,
		func(ctx context.Context) error {
			return s.o.Bus.Consume(ctx, bus.ConsumerSpec{
				Stream:  bus.StreamRewritten,
				Durable: Stage,
				Stage:   Stage,
				Workers: s.o.Workers,
				Backoff: s.o.RetryBackoff,
			}, s.handle)
		},
		s.sched.run,
		s.listen,
	)
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

// listen kicks the scheduler for every tenant named on LimitChannel. The
// client resubscribes by itself after a lost connection.
func (s *Service) listen(ctx context.Context) error {
	ps := s.o.Redis.Subscribe(ctx, LimitChannel)
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			if s.o.Config.Tenant(m.Payload) != nil {
				s.o.Log.Info("daily limit changed; looking at held mail", "tenant", m.Payload)
				s.sched.kick(m.Payload)
			}
		}
	}
}

// rctx bounds one Redis call by RedisTimeout.
func (s *Service) rctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.o.RedisTimeout)
}

// handle counts one mail. Its result follows bus.Handler: invalid input
// is rejected (dead-lettered); a Redis or publish error is temporary, and
// the mail is redelivered with backoff without having reached mail.ready
// (fail closed); an over-limit mail is stored in the held line and
// acknowledged; a mail over a pacing rule is stored in the paced line and
// acknowledged.
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
	rctx, cancel := s.rctx(ctx)
	a, err := s.ledger.Admit(rctx, t.ID, w, m.GetMailId(), t.DailyLimit)
	cancel()
	if err != nil {
		return err
	}
	switch a.Line {
	case HeldLine:
		return s.hold(ctx, t, w, &m, d, a, now)
	case PacedLine, ReleasingLine:
		// Granted already; the scheduler publishes it.
		if a.Stored == 0 {
			return s.store(ctx, t, w, m.GetMailId(), d, now)
		}
		return nil
	}
	g := Grant{Window: a.Window, Used: a.Used, Limit: a.Limit, Crossed80: a.Crossed80, Reached100: a.Reached100}
	if err := s.announceThresholds(ctx, t, g, a.Repeat, now); err != nil {
		return err
	}
	rctx, cancel = s.rctx(ctx)
	wait, err := s.pacer.Reserve(rctx, t.ID, m.GetRecipient().GetEmail(), now)
	cancel()
	if err != nil {
		return err
	}
	if wait > 0 {
		return s.pace(ctx, t, w, &m, d, g, now.Add(wait), now)
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
	s.o.Log.Debug("mail granted", "tenant", t.ID, "mail_id", m.GetMailId(), "window", a.Window,
		"used", a.Used, "limit", a.Limit, "repeat", a.Repeat)
	return nil
}

// hold finishes holding an over-limit mail that Admit put in the held
// line: it stores the payload (unless a previous try did), then publishes
// the held MailEvent with the planned release time.
func (s *Service) hold(ctx context.Context, t *config.Tenant, w Window, m *cmv1.OutboundMail, d *bus.Delivery, a Admission, now time.Time) error {
	if a.Stored == 0 {
		if err := s.store(ctx, t, w, m.GetMailId(), d, now); err != nil {
			return err
		}
	}
	release := s.plannedRelease(t, w, a.Used, a.Limit, a.Position, now)
	ev := events.ForMail(m, cmv1.Outcome_OUTCOME_HELD, Stage)
	ev.At = timestamppb.New(now)
	ev.ReleaseAt = timestamppb.New(release)
	ev.Reason = fmt.Sprintf("daily limit of %d reached in window %s (%d used); number %d in line, planned release at %s",
		a.Limit, w.Name, a.Used, a.Position, release.Format(time.RFC3339))
	if a.Used < a.Limit {
		ev.Reason = fmt.Sprintf("older mail waits for window %s (limit %d, %d used); number %d in line, planned release at %s",
			w.Name, a.Limit, a.Used, a.Position, release.Format(time.RFC3339))
	}
	if err := events.PublishMail(ctx, s.o.Bus, ev); err != nil {
		return err
	}
	if !a.Repeat {
		s.o.Log.Info("mail held: daily limit reached", "tenant", t.ID, "mail_id", m.GetMailId(),
			"window", w.Name, "used", a.Used, "limit", a.Limit, "position", a.Position, "release_at", release)
	}
	return nil
}

// pace puts a granted mail in the paced line until due and stores its
// payload.
func (s *Service) pace(ctx context.Context, t *config.Tenant, w Window, m *cmv1.OutboundMail, d *bus.Delivery, g Grant, due, now time.Time) error {
	g.Crossed80, g.Reached100, g.Paced = false, false, true // announced by the caller
	rctx, cancel := s.rctx(ctx)
	stored, err := s.ledger.Park(rctx, t.ID, m.GetMailId(), due, g)
	cancel()
	if err != nil {
		return err
	}
	if stored == 0 {
		if err := s.store(ctx, t, w, m.GetMailId(), d, now); err != nil {
			return err
		}
	}
	s.sched.wakeAt(t.ID, due)
	s.o.Log.Debug("mail paced", "tenant", t.ID, "mail_id", m.GetMailId(),
		"domain", Domain(m.GetRecipient().GetEmail()), "due", due)
	return nil
}

// store copies the input d of mailID, which waits in the held or paced
// line, to the HELD stream and records its sequence. When the window has
// room or the mail is due, it asks the scheduler for a pass.
func (s *Service) store(ctx context.Context, t *config.Tenant, w Window, mailID string, d *bus.Delivery, now time.Time) error {
	msg := mailMsg(bus.Subject(bus.HeldPrefix, t.ID), d.Data, bus.TraceFrom(ctx))
	ack, err := s.o.Bus.JetStream().PublishMsg(ctx, msg, jetstream.WithMsgID(bus.MsgID(mailID, heldStage)))
	if err != nil {
		return fmt.Errorf("quota: store %s on %s: %w", mailID, msg.Subject, err)
	}
	rctx, cancel := s.rctx(ctx)
	stored, releasable, err := s.ledger.Locate(rctx, t.ID, w, mailID, ack.Sequence, now, t.DailyLimit)
	cancel()
	if err != nil {
		return err
	}
	if stored != ack.Sequence {
		// Stored twice (a retry outside the duplicate window), or taken
		// out of every line meanwhile: this copy is not needed.
		if err := s.deleteHeld(ctx, ack.Sequence); err != nil {
			s.o.Log.Warn("surplus HELD copy not deleted", "tenant", t.ID, "mail_id", mailID, "seq", ack.Sequence, "err", err)
		}
	}
	if releasable {
		s.sched.kick(t.ID)
	}
	return nil
}

// mailMsg is an OutboundMail message for subject with the headers
// bus.Publish sets: the payload's type and the trace.
func mailMsg(subject string, data []byte, tr bus.Trace) *nats.Msg {
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	msg.Header.Set(bus.HeaderType, string((&cmv1.OutboundMail{}).ProtoReflect().Descriptor().FullName()))
	if tr.CorrelationID != "" {
		msg.Header.Set(bus.HeaderCorrelation, tr.CorrelationID)
	}
	if tr.TraceParent != "" {
		msg.Header.Set(bus.HeaderTraceParent, tr.TraceParent)
	}
	return msg
}

// plannedRelease is when the mail at position in the held line is
// planned to be released, with used of limit taken in window w: the
// windows to come release limit mails each, in batches of ReleaseBatch
// every ReleaseInterval. It is a plan: a changed limit, or mail paced on
// release, moves it.
func (s *Service) plannedRelease(t *config.Tenant, w Window, used, limit, position int64, now time.Time) time.Time {
	if limit <= 0 || position <= 0 {
		return w.End
	}
	room := max(limit-used, 0)
	start, rank := now, position-1
	if position > room {
		ahead := position - room - 1
		windows := min(ahead/limit, 100_000)
		start, rank = windowAfter(t, w, int(windows)+1).Start, ahead%limit
	}
	return start.Add(time.Duration(rank/int64(s.o.ReleaseBatch)) * s.o.ReleaseInterval)
}

// announceThresholds publishes a QuotaEvent on events.quota.<tenant> for
// each threshold (80 %, 100 %) that grant g reached. The Ledger reports a
// threshold for one mail per window only, and again when that mail is
// retried, so a crash between the grant and this publish cannot lose the
// event; the Nats-Msg-Id (tenant, window, percent) absorbs the repeat.
func (s *Service) announceThresholds(ctx context.Context, t *config.Tenant, g Grant, repeat bool, now time.Time) error {
	for _, th := range []struct {
		reached bool
		percent int32
	}{{g.Crossed80, 80}, {g.Reached100, 100}} {
		if !th.reached {
			continue
		}
		w, err := windowNamed(t, g.Window)
		if err != nil {
			return fmt.Errorf("quota: window of grant: %w", err)
		}
		ev := &cmv1.QuotaEvent{
			Tenant:   t.ID,
			Window:   g.Window,
			Used:     g.Used,
			Limit:    g.Limit,
			Percent:  th.percent,
			At:       timestamppb.New(now),
			ResetsAt: timestamppb.New(w.End),
		}
		id := bus.MsgID(t.ID+":"+g.Window+":"+strconv.Itoa(int(th.percent)), Stage)
		if err := s.o.Bus.Publish(ctx, bus.Subject(bus.QuotaEventPrefix, t.ID), ev, id); err != nil {
			return err
		}
		if !repeat {
			s.o.Log.Info("quota threshold reached", "tenant", t.ID, "window", g.Window,
				"percent", th.percent, "used", g.Used, "limit", g.Limit, "resets_at", w.End)
		}
	}
	return nil
}

// heldStream returns the HELD stream's handle.
func (s *Service) heldStream(ctx context.Context) (jetstream.Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held != nil {
		return s.held, nil
	}
	st, err := s.o.Bus.JetStream().Stream(ctx, bus.StreamHeld)
	if err != nil {
		return nil, fmt.Errorf("quota: stream %s: %w", bus.StreamHeld, err)
	}
	s.held = st
	return st, nil
}

// deleteHeld deletes a copy from the HELD stream. A message deleted
// already is fine.
func (s *Service) deleteHeld(ctx context.Context, seq uint64) error {
	st, err := s.heldStream(ctx)
	if err != nil {
		return err
	}
	if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
		return fmt.Errorf("quota: delete %d from %s: %w", seq, bus.StreamHeld, err)
	}
	return nil
}
