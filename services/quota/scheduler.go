package quota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// maxRounds bounds the Release calls of one pass, so that one tenant with
// a long paced line does not hold up the others; the pass is due again at
// once.
const maxRounds = 8

// maxBackoffTicks bounds the ticks a tenant is skipped after failed
// passes.
const maxBackoffTicks = 64

// scheduler releases the mail of every tenant's lines; see the package
// doc. Its state is in memory and only says when to look again: the lines
// are in Redis, so a restarted scheduler starts with a pass over every
// tenant and loses nothing.
type scheduler struct {
	s    *Service
	wake chan struct{}
	// passes counts the passes made, failed or not (tests wait on it).
	passes atomic.Int64

	mu     sync.Mutex
	states map[string]*tenantState
}

// tenantState is what the scheduler remembers of one tenant.
type tenantState struct {
	// due is when, by the service's clock, the next pass is due; zero for
	// at once.
	due time.Time
	// kicked is set by kick during a pass, so that the pass's plan does
	// not overwrite it; early is the earliest time asked by wakeAt since
	// the pass began (zero for none), for the same reason.
	kicked bool
	early  time.Time
	// skip counts the ticks left to skip after failed passes; fails
	// counts the failed passes in a row.
	skip, fails int
	// undone are mails published whose Done failed; the next pass
	// confirms them first (and then deletes their HELD copies).
	undone []Waiting
	// empty is true when the last pass found the tenant's lines empty;
	// swept is when, by the service's clock, its HELD subject was last
	// cleared of orphans.
	empty bool
	swept time.Time
}

// OrphanSweep is how often, by the service's clock, the scheduler clears a
// tenant's HELD subject of orphans while the tenant's lines are empty: a
// copy stored twice by a retry that came after the stream's duplicate
// window, and not deleted because its process died.
const OrphanSweep = time.Hour

func newScheduler(s *Service) *scheduler {
	return &scheduler{s: s, wake: make(chan struct{}, 1), states: map[string]*tenantState{}}
}

func (sc *scheduler) state(tenant string) *tenantState {
	st := sc.states[tenant]
	if st == nil {
		st = &tenantState{}
		sc.states[tenant] = st
	}
	return st
}

// kick asks for a pass over tenant at once.
func (sc *scheduler) kick(tenant string) {
	sc.mu.Lock()
	st := sc.state(tenant)
	st.due, st.kicked = time.Time{}, true
	sc.mu.Unlock()
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// wakeAt asks for a pass over tenant at at, by the service's clock, or
// before: a mail was parked until then.
func (sc *scheduler) wakeAt(tenant string, at time.Time) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.state(tenant)
	if st.early.IsZero() || at.Before(st.early) {
		st.early = at
	}
	if at.Before(st.due) {
		st.due = at
	}
}

// run passes over the tenants that are due, every Tick and whenever
// kicked, until ctx is done.
func (sc *scheduler) run(ctx context.Context) error {
	t := time.NewTicker(sc.s.o.Tick)
	defer t.Stop()
	for {
		sc.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-sc.wake:
		}
	}
}

// tick runs a pass for every tenant that is due.
func (sc *scheduler) tick(ctx context.Context) {
	log := sc.s.o.Log
	for _, id := range sc.s.o.Config.IDs() {
		if ctx.Err() != nil {
			return
		}
		now := sc.s.o.Now()
		sc.mu.Lock()
		st := sc.state(id)
		if st.skip > 0 {
			st.skip--
			sc.mu.Unlock()
			continue
		}
		if now.Before(st.due) {
			sc.mu.Unlock()
			continue
		}
		st.kicked, st.early = false, time.Time{}
		sc.mu.Unlock()

		// A pass is not cut short by shutdown: what it took, it publishes.
		next, err := sc.pass(context.WithoutCancel(ctx), sc.s.o.Config.Tenant(id), now)
		sc.passes.Add(1)

		sc.mu.Lock()
		switch {
		case err != nil:
			st.fails++
			st.skip = min(1<<min(st.fails, 6), maxBackoffTicks) - 1
			st.due = time.Time{}
			if st.fails == 1 || st.fails%20 == 0 {
				log.Warn("quota scheduler pass failed; retrying with backoff", "tenant", id, "failures", st.fails, "err", err)
			}
		default:
			if st.fails > 0 {
				log.Info("quota scheduler pass succeeded again", "tenant", id, "after_failures", st.fails)
			}
			st.fails, st.skip = 0, 0
			st.due = next
			if !st.early.IsZero() && st.early.Before(next) {
				st.due = st.early
			}
			if st.kicked {
				st.due = time.Time{}
			}
		}
		sc.mu.Unlock()
	}
}

// takeUndone returns and forgets tenant's unconfirmed publications.
func (sc *scheduler) takeUndone(tenant string) []Waiting {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.state(tenant)
	mails := st.undone
	st.undone = nil
	return mails
}

func (sc *scheduler) putUndone(tenant string, mails []Waiting) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.state(tenant)
	st.undone = append(st.undone, mails...)
}

// pass releases what tenant t may publish at now and returns when the
// next pass is due.
func (sc *scheduler) pass(ctx context.Context, t *config.Tenant, now time.Time) (time.Time, error) {
	s := sc.s
	if mails := sc.takeUndone(t.ID); len(mails) > 0 {
		if err := sc.done(ctx, t.ID, mails); err != nil {
			return time.Time{}, err
		}
	}
	// An orphan sweep needs the last HELD sequence from before the lines
	// are found empty; see sweepOrphans.
	var last uint64
	sc.mu.Lock()
	st := sc.state(t.ID)
	sweep := st.empty && now.Sub(st.swept) >= OrphanSweep
	sc.mu.Unlock()
	if sweep {
		var err error
		if last, err = s.lastHeld(ctx, t.ID); err != nil {
			return time.Time{}, err
		}
	}
	w := WindowOf(t, now)
	opts := ReleaseOptions{Batch: s.o.ReleaseBatch, Interval: s.o.ReleaseInterval, Lease: s.o.Lease}
	var b Batch
	for round := range maxRounds {
		rctx, cancel := s.rctx(ctx)
		var err error
		b, err = s.ledger.Release(rctx, t.ID, w, t.DailyLimit, now, opts)
		cancel()
		if err != nil {
			return time.Time{}, err
		}
		if len(b.Mails) == 0 {
			break
		}
		sweep = false
		published, failed, err := s.publishAll(ctx, t, b.Mails, now)
		if err := sc.done(ctx, t.ID, published); err != nil {
			return time.Time{}, err
		}
		if len(failed) > 0 {
			rctx, cancel := s.rctx(ctx)
			_ = s.ledger.Expire(rctx, t.ID, failed) // else their lease ends by itself
			cancel()
			return time.Time{}, err
		}
		if len(b.Mails) < s.o.ReleaseBatch {
			break
		}
		if round == maxRounds-1 {
			return now, nil // more to do; other tenants first
		}
	}
	empty := b.Held == 0 && b.Paced == 0 && b.Releasing == 0 && len(b.Mails) == 0
	if sweep && empty {
		if err := s.sweepOrphans(ctx, t.ID, last); err != nil {
			return time.Time{}, err
		}
	}
	sc.mu.Lock()
	st.empty = empty
	if sweep && empty {
		st.swept = now
	}
	sc.mu.Unlock()
	return sc.plan(w, b, now), nil
}

// lastHeld returns the sequence of the last message on
// mail.held.<tenant>, 0 when there is none.
func (s *Service) lastHeld(ctx context.Context, tenant string) (uint64, error) {
	st, err := s.heldStream(ctx)
	if err != nil {
		return 0, err
	}
	m, err := st.GetLastMsgForSubject(ctx, bus.Subject(bus.HeldPrefix, tenant))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("quota: last message on %s: %w", bus.Subject(bus.HeldPrefix, tenant), err)
	}
	return m.Sequence, nil
}

// sweepOrphans deletes the messages of mail.held.<tenant> up to sequence
// last, after a pass found the tenant's lines empty. It is safe: a mail
// enters a line before its payload is stored, and its copy is deleted
// only after it has left the lines; so with the lines empty, a message
// stored before the pass looked (last was read before) belongs to no mail
// waiting, and one stored after has a higher sequence.
func (s *Service) sweepOrphans(ctx context.Context, tenant string, last uint64) error {
	if last == 0 {
		return nil
	}
	st, err := s.heldStream(ctx)
	if err != nil {
		return err
	}
	subject := bus.Subject(bus.HeldPrefix, tenant)
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeSequence(last+1)); err != nil {
		return fmt.Errorf("quota: sweep %s: %w", subject, err)
	}
	s.o.Log.Info("HELD subject swept of orphan copies", "tenant", tenant, "up_to_seq", last)
	return nil
}

// done confirms publications, keeping them for the next pass when Redis
// does not answer; then it deletes the mails' HELD copies. A mail keeps
// its copy as long as it is in a line; a copy left behind by a crash
// between the two steps is an orphan, which sweepOrphans deletes.
func (sc *scheduler) done(ctx context.Context, tenant string, mails []Waiting) error {
	if len(mails) == 0 {
		return nil
	}
	ids := make([]string, len(mails))
	for i, m := range mails {
		ids[i] = m.ID
	}
	rctx, cancel := sc.s.rctx(ctx)
	_, err := sc.s.ledger.Done(rctx, tenant, ids)
	cancel()
	if err != nil {
		sc.putUndone(tenant, mails)
		return err
	}
	sem := make(chan struct{}, sc.s.o.ReleaseWorkers)
	var wg sync.WaitGroup
	for _, m := range mails {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := sc.s.deleteHeld(ctx, m.Stored); err != nil {
				sc.s.o.Log.Warn("HELD copy of a released mail not deleted; the orphan sweep will", "tenant", tenant, "mail_id", m.ID, "seq", m.Stored, "err", err)
			}
		})
	}
	wg.Wait()
	return nil
}

// plan returns when the next pass over a tenant is due after a pass at
// now in window w that ended with b: at the window's end, when its first
// paced mail is due, when a lease ends, when the release gate opens if
// held mail waits for room that is there, and at the latest after Sweep.
func (sc *scheduler) plan(w Window, b Batch, now time.Time) time.Time {
	next := w.End
	earlier := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	earlier(now.Add(sc.s.o.Sweep))
	earlier(b.NextPaced)
	earlier(b.NextLease)
	if b.Held > 0 && b.Used < b.Limit {
		if b.Gate.After(now) {
			earlier(b.Gate)
		} else {
			// Room, and held mail that is not stored yet: its Locate
			// kicks the scheduler; this is a safety net.
			earlier(now.Add(sc.s.o.ReleaseInterval))
		}
	}
	return next
}

// releaseResult is what became of one mail of a pass.
type releaseResult int

const (
	// toPublish: ready to be published.
	toPublish releaseResult = iota
	// published on mail.ready, or not to be published (dead-lettered,
	// or its copy is missing): Done.
	published
	// parked in the paced line.
	parked
)

// release is one mail of a pass on its way to mail.ready.
type release struct {
	wm     Waiting
	m      *cmv1.OutboundMail
	trace  bus.Trace
	result releaseResult
	err    error
}

// AsyncPublishTimeout bounds the wait for the acknowledgements of a
// pass's publications on mail.ready.
const AsyncPublishTimeout = 30 * time.Second

// publishAll publishes mails taken by a pass on mail.ready.<tenant>, in
// their order: it prepares them concurrently (read the payload from HELD,
// reserve the pacing slot, at most ReleaseWorkers at once), publishes them
// one after the other without waiting for each acknowledgement (so the
// stream keeps their order), then finishes them concurrently (events). It
// returns the mails to confirm with Done, the ids that failed and the
// first error.
func (s *Service) publishAll(ctx context.Context, t *config.Tenant, mails []Waiting, now time.Time) (done []Waiting, failed []string, first error) {
	rs := make([]*release, len(mails))
	for i, wm := range mails {
		rs[i] = &release{wm: wm}
	}
	s.eachRelease(rs, func(r *release) { r.result, r.err = s.prepare(ctx, t, r, now) })
	s.publishInOrder(ctx, t, rs, now)
	s.eachRelease(rs, func(r *release) {
		if r.err == nil && r.result == published && r.m != nil {
			r.err = s.finish(ctx, t, r, now)
		}
	})
	for _, r := range rs {
		switch {
		case r.err != nil:
			failed = append(failed, r.wm.ID)
			if first == nil {
				first = r.err
			}
		case r.result == published:
			done = append(done, r.wm)
		}
	}
	return done, failed, first
}

// eachRelease runs f on every release that has not failed, at most
// ReleaseWorkers at once.
func (s *Service) eachRelease(rs []*release, f func(*release)) {
	sem := make(chan struct{}, s.o.ReleaseWorkers)
	var wg sync.WaitGroup
	for _, r := range rs {
		if r.err != nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(r)
		})
	}
	wg.Wait()
}

// prepare reads a mail's payload from HELD and, unless done already,
// reserves its pacing slot, parking it when the slot is later.
func (s *Service) prepare(ctx context.Context, t *config.Tenant, r *release, now time.Time) (releaseResult, error) {
	st, err := s.heldStream(ctx)
	if err != nil {
		return 0, err
	}
	raw, err := st.GetMsg(ctx, r.wm.Stored)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// A mail keeps its copy while it is in a line: another pass whose
		// lease overlapped this one published it, or HELD was purged by
		// hand. Nothing is left to publish.
		s.o.Log.Error("HELD copy of a waiting mail is missing; forgetting the mail", "tenant", t.ID,
			"mail_id", r.wm.ID, "seq", r.wm.Stored)
		return published, nil
	}
	if err != nil {
		return 0, fmt.Errorf("quota: read %s from %s: %w", r.wm.ID, bus.StreamHeld, err)
	}
	var m cmv1.OutboundMail
	if err := proto.Unmarshal(raw.Data, &m); err != nil || m.GetMailId() != r.wm.ID {
		return published, s.deadLetterHeld(ctx, t.ID, raw, fmt.Sprintf("quota: HELD message %d is not mail %s: %v", r.wm.Stored, r.wm.ID, err))
	}
	r.m = &m
	r.trace = bus.Trace{CorrelationID: raw.Header.Get(bus.HeaderCorrelation), TraceParent: raw.Header.Get(bus.HeaderTraceParent)}
	g := r.wm.Grant
	if g.Paced {
		return toPublish, nil
	}
	rctx, cancel := s.rctx(ctx)
	wait, err := s.pacer.Reserve(rctx, t.ID, m.GetRecipient().GetEmail(), now)
	cancel()
	if err != nil || wait == 0 {
		return toPublish, err
	}
	if err := s.announceThresholds(bus.WithTrace(ctx, r.trace), t, g, false, now); err != nil {
		return 0, err
	}
	g.Crossed80, g.Reached100, g.Paced = false, false, true
	rctx, cancel = s.rctx(ctx)
	_, err = s.ledger.Park(rctx, t.ID, r.wm.ID, now.Add(wait), g)
	cancel()
	if err != nil {
		return 0, err
	}
	s.sched.wakeAt(t.ID, now.Add(wait))
	s.o.Log.Debug("released mail paced", "tenant", t.ID, "mail_id", r.wm.ID, "due", now.Add(wait))
	return parked, nil
}

// publishInOrder publishes the prepared mails on mail.ready.<tenant> with
// their grants, in order, and waits for the acknowledgements.
func (s *Service) publishInOrder(ctx context.Context, t *config.Tenant, rs []*release, now time.Time) {
	js := s.o.Bus.JetStream()
	futures := make([]jetstream.PubAckFuture, len(rs))
	for i, r := range rs {
		if r.err != nil || r.result != toPublish {
			continue
		}
		g := r.wm.Grant
		r.m.Quota = &cmv1.QuotaGrant{Window: g.Window, Used: g.Used, Limit: g.Limit, GrantedAt: timestamppb.New(now)}
		if g.Held {
			r.m.Quota.HeldUntil = timestamppb.New(now)
		}
		data, err := proto.Marshal(r.m)
		if err != nil {
			r.err = fmt.Errorf("quota: marshal %s: %w", r.wm.ID, err)
			continue
		}
		if g.Held {
			// The released event is stored before the mail can reach the
			// sender, so a mail's timeline never shows a delivery attempt
			// before its release. A retry republishes it under the same
			// Nats-Msg-Id, which the stream drops.
			ev := events.ForMail(r.m, cmv1.Outcome_OUTCOME_RELEASED, Stage)
			ev.At = timestamppb.New(now)
			ev.Reason = fmt.Sprintf("released from the held line in window %s (%d of %d)", g.Window, g.Used, g.Limit)
			if r.err = events.PublishMail(bus.WithTrace(ctx, r.trace), s.o.Bus, ev); r.err != nil {
				continue
			}
		}
		futures[i], r.err = js.PublishMsgAsync(mailMsg(bus.Subject(bus.ReadyPrefix, t.ID), data, r.trace),
			jetstream.WithMsgID(bus.MsgID(r.wm.ID, Stage)))
	}
	timeout := time.NewTimer(AsyncPublishTimeout)
	defer timeout.Stop()
	for i, f := range futures {
		if f == nil {
			continue
		}
		r := rs[i]
		select {
		case <-f.Ok():
			r.result = published
		case err := <-f.Err():
			r.err = fmt.Errorf("quota: publish %s on mail.ready: %w", r.wm.ID, err)
		case <-timeout.C:
			r.err = fmt.Errorf("quota: publish %s on mail.ready: no acknowledgement within %s", r.wm.ID, AsyncPublishTimeout)
		case <-ctx.Done():
			r.err = ctx.Err()
		}
	}
}

// finish publishes what follows a mail's publication: the quota events
// its grant reached (the released event went before the mail).
func (s *Service) finish(ctx context.Context, t *config.Tenant, r *release, now time.Time) error {
	ctx = bus.WithTrace(ctx, r.trace)
	g := r.wm.Grant
	if err := s.announceThresholds(ctx, t, g, false, now); err != nil {
		return err
	}
	s.o.Log.Debug("mail released", "tenant", t.ID, "mail_id", r.wm.ID, "window", g.Window,
		"used", g.Used, "limit", g.Limit, "held", g.Held)
	return nil
}

// deadLetterHeld copies a HELD message that is not the mail it should be
// (it cannot happen unless the stream was written by hand) to
// dlq.quota.<tenant>; the caller forgets the mail and deletes the message.
func (s *Service) deadLetterHeld(ctx context.Context, tenant string, raw *jetstream.RawStreamMsg, reason string) error {
	h := nats.Header{}
	for k, v := range raw.Header {
		if k != jetstream.MsgIDHeader {
			h[k] = v
		}
	}
	h.Set(bus.HeaderDLQReason, reason)
	h.Set(bus.HeaderDLQSubject, raw.Subject)
	h.Set(bus.HeaderDLQStage, Stage)
	dl := &nats.Msg{Subject: bus.Subject(bus.DLQPrefix, Stage, tenant), Data: raw.Data, Header: h}
	if err := s.o.Bus.PublishMsg(ctx, dl, bus.MsgID(fmt.Sprintf("%s#%d", raw.Subject, raw.Sequence), "dlq")); err != nil {
		return err
	}
	s.o.Log.Error("held message dead-lettered", "tenant", tenant, "seq", raw.Sequence, "reason", reason)
	return nil
}
