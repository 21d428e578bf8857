package ingest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// publishTimeout bounds how long a request waits for the POSTS stream to
// acknowledge a post before it is answered "unavailable".
const publishTimeout = 5 * time.Second

// errUnavailable is returned by accept when the bus cannot store a post.
type errUnavailable struct{ err error }

func (e *errUnavailable) Error() string { return "ingest: the bus is unavailable: " + e.err.Error() }
func (e *errUnavailable) Unwrap() error { return e.err }

// accept stores a validated post with its id assigned on
// chatter.post.<tenant>, unless it was stored before, and waits up to
// wait for its fan-out (not at all when wait is negative). It returns
// ErrIdempotencyConflict when the post id already names another post,
// and *errUnavailable when NATS fails.
func (s *Service) accept(ctx context.Context, t *config.Tenant, p *cmv1.ChatterPost, wait time.Duration) (*PostStatus, error) {
	if err := s.o.Bus.Ready(); err != nil {
		return nil, &errUnavailable{err}
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout+max(wait, 0))
	defer cancel()
	st := &PostStatus{Tenant: t.ID, PostID: p.GetPostId(), MessageID: MessageID(p.GetPostId(), t), State: StateAccepted,
		Thread: threadRef(p.GetThread()), Fingerprint: fingerprint(p), AcceptedAt: s.o.Now().UTC(),
		MailIDs: []string{}, InboxUsers: []string{}, SuppressedMailIDs: []string{}}
	pctx, pcancel := context.WithTimeout(ctx, publishTimeout)
	defer pcancel()
	old, created, err := s.posts.create(pctx, st)
	if err != nil {
		return nil, &errUnavailable{err}
	}
	if !created {
		if old.Fingerprint != st.Fingerprint {
			return nil, ErrIdempotencyConflict
		}
		if old.State == StateFannedOut {
			return old, nil
		}
		st = old
	}
	// Stored again when it is a retry of a post still waiting: the
	// stream drops the duplicate within its window, and the consumer
	// skips a post already fanned out after it.
	if err := s.o.Bus.Publish(pctx, bus.Subject(bus.PostPrefix, p.GetTenant()), p, bus.MsgID(p.GetPostId(), "post")); err != nil {
		return nil, &errUnavailable{err}
	}
	s.o.Log.Debug("post accepted", "tenant", p.GetTenant(), "post_id", p.GetPostId(), "correlation_id", bus.TraceFrom(ctx).CorrelationID)
	if wait < 0 {
		return st, nil
	}
	done, err := s.posts.waitFannedOut(ctx, t.ID, p.GetPostId(), wait)
	if err != nil || done == nil {
		// The post is stored; only the answer lacks its mail ids.
		return st, nil
	}
	return done, nil
}

// serveRequests answers api.post.<tenant> requests (core NATS, queue
// group "ingest") until ctx is done, RequestWorkers at a time.
//
// A request is a chattermail.v1.ChatterPost in protobuf; its tenant must
// be empty or the subject's. The answer is a chattermail.v1.PostAccepted:
// post id, Message-ID and the ids of the mails created, once the post is
// stored and fanned out; or its error field alone when the post is
// refused. A post with an idempotency key (or a post id) may be sent
// again: the answer is the same and nothing is sent twice. When the
// fan-out takes longer than FanOutWait the answer carries post id and
// Message-ID, no mail ids, and an error saying so; ask again with the
// same idempotency key for the mail ids.
func (s *Service) serveRequests(ctx context.Context) error {
	msgs := make(chan *nats.Msg, s.o.RequestWorkers)
	sub, err := s.o.Bus.Conn().ChanQueueSubscribe(bus.APIPostPrefix+".*", Stage, msgs)
	if err != nil {
		return fmt.Errorf("ingest: subscribe %s.*: %w", bus.APIPostPrefix, err)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.o.RequestWorkers)
	hctx := context.WithoutCancel(ctx)
	serve := func(m *nats.Msg) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.answerRequest(hctx, m)
		}()
	}
	for {
		select {
		case m := <-msgs:
			serve(m)
		case <-ctx.Done():
			// Stop taking requests (another replica gets them), answer
			// those already received, then return.
			_ = sub.Unsubscribe()
			for {
				select {
				case m := <-msgs:
					serve(m)
				default:
					wg.Wait()
					return nil
				}
			}
		}
	}
}

func (s *Service) answerRequest(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		s.o.Log.Warn("api.post message without reply subject ignored; publish on chatter.post.<tenant> instead", "subject", m.Subject)
		return
	}
	a := s.request(ctx, m)
	data, _ := proto.Marshal(a)
	if err := m.Respond(data); err != nil {
		s.o.Log.Warn("api.post answer failed", "subject", m.Subject, "err", err)
	}
}

func (s *Service) request(ctx context.Context, m *nats.Msg) *cmv1.PostAccepted {
	tenant := bus.SubjectTenant(bus.APIPostPrefix, m.Subject)
	t := s.o.Config.Tenant(tenant)
	if t == nil {
		return &cmv1.PostAccepted{Error: fmt.Sprintf("unknown tenant %q", tenant)}
	}
	var p cmv1.ChatterPost
	if err := proto.Unmarshal(m.Data, &p); err != nil {
		return &cmv1.PostAccepted{Error: "the request is not a protobuf chattermail.v1.ChatterPost: " + err.Error()}
	}
	if p.GetTenant() == "" {
		p.Tenant = tenant
	}
	if p.GetTenant() != tenant {
		return &cmv1.PostAccepted{Error: fmt.Sprintf("post for tenant %q sent on %s", p.GetTenant(), m.Subject)}
	}
	switch {
	case p.GetPostId() != "":
	case p.GetIdempotencyKey() != "":
		p.PostId = postIDForKey(tenant, p.GetIdempotencyKey())
	default:
		p.PostId = newPostID()
	}
	p.Source = cmv1.PostSource_POST_SOURCE_BUS
	if p.GetPostedAt() == nil {
		p.PostedAt = nowpb(s.o.Now())
	}
	if err := Validate(&p); err != nil {
		return &cmv1.PostAccepted{Error: err.Error()}
	}
	tr := bus.Trace{CorrelationID: m.Header.Get(bus.HeaderCorrelation), TraceParent: m.Header.Get(bus.HeaderTraceParent)}
	if tr.CorrelationID == "" {
		tr.CorrelationID = bus.NewCorrelationID()
	}
	st, err := s.accept(bus.WithTrace(ctx, tr), t, &p, s.o.FanOutWait)
	if err != nil {
		return &cmv1.PostAccepted{Error: err.Error()}
	}
	a := &cmv1.PostAccepted{PostId: st.PostID, MessageId: st.MessageID, MailIds: st.MailIDs}
	if st.State != StateFannedOut {
		a.Error = "the post is stored but its fan-out is still pending; send it again with the same idempotency key for its mail ids"
	}
	return a
}
