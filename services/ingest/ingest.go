// Package ingest is where chatter enters chattermail. It takes posts from
// the public HTTP API (POST /v1/posts), from the bus (chatter.post.<tenant>,
// stream POSTS) and from NATS requests (api.post.<tenant>), keeps each
// thread's followers, and fans each post out into one OutboundMail per
// email recipient on mail.compose.<tenant>, plus an InboxNotification on
// events.inbox.<tenant>.<user> for internal followers who prefer in-app
// notifications (mail-rules §6).
//
// State lives in JetStream KV buckets, created at start: "threads"
// (followers, package threads), "suppression" (package suppression),
// "msgids" (Message-ID → thread, package msgindex), "status" (each mail's
// timeline, built from the EVENTS stream by package status) and "posts"
// (each post's idempotency fingerprint and fan-out result).
//
// The HTTP API and the request/reply subject store the post on POSTS and
// wait (up to Options.FanOutWait) for its fan-out, so they can answer with
// the mail ids; the fan-out itself happens in Run, which consumes POSTS.
// Every output is published with a deterministic Nats-Msg-Id derived from
// the post id, and a post already fanned out is not fanned out again, so
// a redelivered or republished post never produces a second copy of any
// mail.
package ingest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	"github.com/chattermail/chattermail/platform/proc"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/msgindex"
	"github.com/chattermail/chattermail/services/ingest/status"
	"github.com/chattermail/chattermail/services/ingest/suppression"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage is the stage name in events, dead letters and consumer names; it
// is also the queue group of api.post.<tenant>.
const Stage = "ingest"

// DefaultPublicURL is the default base of the links chattermail puts in
// mail.
const DefaultPublicURL = "http://127.0.0.1:8080"

// Options configure a Service.
type Options struct {
	// Bus is the connection to NATS. Required.
	Bus *bus.Bus
	// Config holds the tenants: their API keys and alias domains. Required.
	Config *config.Config
	// Log receives one line per post; never bodies, addresses or API keys.
	// Required.
	Log *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Workers is how many posts Run fans out at once; default 4.
	Workers int
	// FanOutConcurrency is how many mails of one post are published at
	// once; default 32.
	FanOutConcurrency int
	// MaxBodyBytes is the largest HTTP request body accepted; larger
	// bodies are answered 413. Default 1 MiB.
	MaxBodyBytes int64
	// FanOutWait is how long POST /v1/posts and api.post.<tenant> wait
	// for a stored post to be fanned out before answering without its
	// mail ids; default 10s. A negative value answers at once.
	FanOutWait time.Duration
	// RequestWorkers is how many api.post.<tenant> requests are served
	// at once; default 64.
	RequestWorkers int
	// KVReplicas is the JetStream replica count of the KV buckets;
	// default 1 (use 3 on a cluster).
	KVReplicas int
	// PublicURL is the base URL under which this API is reachable from
	// the Internet, used in the one-click unsubscribe links of every mail
	// (PUBLIC_URL); default DefaultPublicURL. Use https in production
	// (RFC 8058 §3.1).
	PublicURL string
	// UnsubscribeKey signs the unsubscribe links (UNSUBSCRIBE_KEY_FILE,
	// see LoadUnsubscribeKey), at least MinUnsubscribeKeyLen bytes;
	// default DevUnsubscribeKey, with a warning, since anyone can forge
	// links signed with it.
	UnsubscribeKey []byte
}

// Service is the ingest stage: the HTTP API, the api.post responder, the
// POSTS consumer and the status projector.
type Service struct {
	o           Options
	handler     http.Handler
	threads     *threads.Store
	suppression *suppression.List
	msgids      *msgindex.Index
	status      *status.Projector
	posts       *posts
}

// New returns an ingest stage. It creates (or updates) its KV buckets.
func New(o Options) (*Service, error) {
	if o.Bus == nil || o.Config == nil || o.Log == nil {
		return nil, errors.New("ingest: Bus, Config and Log are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.FanOutConcurrency <= 0 {
		o.FanOutConcurrency = 32
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 20
	}
	if o.FanOutWait == 0 {
		o.FanOutWait = 10 * time.Second
	}
	if o.RequestWorkers <= 0 {
		o.RequestWorkers = 64
	}
	o.PublicURL = strings.TrimRight(cmp.Or(o.PublicURL, DefaultPublicURL), "/")
	if u, err := url.Parse(o.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("ingest: public URL %q must be an absolute http or https URL without query", o.PublicURL)
	}
	switch {
	case o.UnsubscribeKey == nil:
		o.UnsubscribeKey = DevUnsubscribeKey
		o.Log.Warn("UNSUBSCRIBE_KEY_FILE is not set: unsubscribe links are signed with the PUBLIC development key and anyone can forge them; set UNSUBSCRIBE_KEY_FILE in production")
	case len(o.UnsubscribeKey) < MinUnsubscribeKeyLen:
		return nil, fmt.Errorf("ingest: unsubscribe key is %d bytes, want at least %d", len(o.UnsubscribeKey), MinUnsubscribeKeyLen)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := o.Bus.JetStream()
	s := &Service{o: o}
	var err error
	if s.threads, err = threads.Open(ctx, js, threads.Options{Replicas: o.KVReplicas, Now: o.Now}); err != nil {
		return nil, err
	}
	if s.suppression, err = suppression.Open(ctx, js, suppression.Options{Replicas: o.KVReplicas, Now: o.Now}); err != nil {
		return nil, err
	}
	if s.msgids, err = msgindex.Open(ctx, js, o.KVReplicas); err != nil {
		return nil, err
	}
	if s.status, err = status.Open(ctx, status.Options{Bus: o.Bus, Log: o.Log, Replicas: o.KVReplicas}); err != nil {
		return nil, err
	}
	if s.posts, err = openPosts(ctx, js, o.KVReplicas); err != nil {
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

// Suppression is the tenants' suppression list the service reads.
func (s *Service) Suppression() *suppression.List { return s.suppression }

// Threads is the thread store the service keeps.
func (s *Service) Threads() *threads.Store { return s.threads }

// Status is the mail status projector the service runs.
func (s *Service) Status() *status.Projector { return s.status }

// Run runs the stage until ctx is done: it consumes chatter.post.*
// (stream POSTS, durable consumer "ingest") and fans out each post,
// answers requests on api.post.* (queue group "ingest"), and folds
// events.mail.> into mail timelines (durable consumer "status"). A post
// is acknowledged only after every mail and notification it causes has
// been stored; an undecodable or invalid post is dead-lettered on
// dlq.ingest.<tenant>.
func (s *Service) Run(ctx context.Context) error {
	return proc.RunAll(ctx,
		func(ctx context.Context) error {
			return s.o.Bus.Consume(ctx, bus.ConsumerSpec{
				Stream:  bus.StreamPosts,
				Durable: Stage,
				Stage:   Stage,
				Workers: s.o.Workers,
			}, s.handle)
		},
		s.serveRequests,
		s.status.Run,
	)
}

// handle fans out one post. Its result follows bus.Handler: Reject for
// input that can never succeed, a plain error (retried) when NATS fails,
// nil once everything is stored.
func (s *Service) handle(ctx context.Context, d *bus.Delivery) error {
	var p cmv1.ChatterPost
	if err := proto.Unmarshal(d.Data, &p); err != nil {
		return bus.Reject(fmt.Errorf("ingest: undecodable ChatterPost: %w", err))
	}
	if p.GetTenant() != d.Tenant {
		return bus.Reject(fmt.Errorf("ingest: post for tenant %q published on %s", p.GetTenant(), d.Subject))
	}
	t := s.o.Config.Tenant(d.Tenant)
	if t == nil {
		return bus.Reject(fmt.Errorf("ingest: unknown tenant %q on %s", d.Tenant, d.Subject))
	}
	if p.GetPostId() == "" {
		if key := p.GetIdempotencyKey(); key != "" {
			p.PostId = postIDForKey(p.GetTenant(), key)
		} else {
			p.PostId = postIDForDelivery(p.GetTenant(), d.StreamSeq, d.Data)
		}
	}
	if err := Validate(&p); err != nil {
		return bus.Reject(err)
	}
	fp := fingerprint(&p)
	rec, _, err := s.posts.get(ctx, p.GetTenant(), p.GetPostId())
	if err != nil {
		return err
	}
	if rec != nil && rec.Fingerprint != fp {
		return bus.Reject(fmt.Errorf("%w: post %s", ErrIdempotencyConflict, p.GetPostId()))
	}
	if rec != nil && rec.State == StateFannedOut {
		s.o.Log.Info("post already fanned out", "tenant", p.GetTenant(), "post_id", p.GetPostId())
		return nil
	}
	if rec == nil {
		rec = &PostStatus{Tenant: p.GetTenant(), PostID: p.GetPostId(), Fingerprint: fp,
			AcceptedAt: s.o.Now().UTC(), Thread: threadRef(p.GetThread())}
	}
	res, err := s.fanOut(ctx, t, &p)
	if err != nil {
		return err
	}
	at := s.o.Now().UTC()
	rec.State, rec.FannedOutAt = StateFannedOut, &at
	rec.MessageID = MessageID(p.GetPostId(), t)
	rec.MailIDs, rec.InboxUsers, rec.SuppressedMailIDs = res.mailIDs, res.inbox, res.suppressed
	return s.posts.put(ctx, rec)
}

func threadRef(th *cmv1.ThreadRef) ThreadRef {
	return ThreadRef{Model: th.GetModel(), ID: th.GetId(), DisplayName: th.GetDisplayName()}
}

// fanOutResult is what one post caused.
type fanOutResult struct {
	mailIDs, inbox, suppressed []string
}

// fanOut merges the post's followers into its thread, resolves the
// recipients and publishes, per recipient, an OutboundMail and its
// composed event, a suppressed event, or an InboxNotification; it then
// indexes the post's Message-ID.
func (s *Service) fanOut(ctx context.Context, t *config.Tenant, p *cmv1.ChatterPost) (*fanOutResult, error) {
	if p.GetSubtype() == "" {
		p.Subtype = SubtypeComment
	}
	th, err := s.mergeFollowers(ctx, p)
	if errors.Is(err, threads.ErrTooManyFollowers) {
		return nil, bus.Reject(fmt.Errorf("ingest: post %s: %w", p.GetPostId(), err))
	}
	if err != nil {
		return nil, fmt.Errorf("ingest: post %s: %w", p.GetPostId(), err)
	}

	messageID := MessageID(p.GetPostId(), t)
	parent := trimMessageID(p.GetParentMessageId())
	if parent == "" && p.GetParentPostId() != "" && postIDRE.MatchString(p.GetParentPostId()) {
		// The parent was posted through chattermail: its Message-ID is known.
		parent = MessageID(p.GetParentPostId(), t)
	}
	var refs []string
	if parent != "" {
		refs = append(refs, parent)
	}
	refs = append(refs, messageID)

	now := timestamppb.New(s.o.Now())
	rs := recipients(p, th.Followers)
	type outcome struct {
		mailID, inboxUser string
		suppressed        bool
	}
	outs := make([]outcome, len(rs))
	err = forEach(ctx, len(rs), s.o.FanOutConcurrency, func(ctx context.Context, i int) error {
		r := rs[i]
		if r.inbox {
			user, err := s.publishInbox(ctx, p, r.partner, now)
			outs[i] = outcome{inboxUser: user}
			return err
		}
		m := &cmv1.OutboundMail{
			MailId:     MailID(p.GetTenant(), p.GetPostId(), r.addr),
			Tenant:     p.GetTenant(),
			PostId:     p.GetPostId(),
			Thread:     p.GetThread(),
			Author:     p.GetAuthor(),
			Recipient:  r.partner,
			Subject:    p.GetSubject(),
			BodyHtml:   p.GetBodyHtml(),
			BodyText:   p.GetBodyText(),
			MessageId:  messageID,
			InReplyTo:  parent,
			References: refs,
			Subtype:    p.GetSubtype(),
			CreatedAt:  now,
			Headers:    s.listHeaders(t.ID, t.AliasDomain, p.GetThread(), r.addr),
		}
		outs[i] = outcome{mailID: m.GetMailId()}
		entry, suppressed, err := s.suppression.IsSuppressed(ctx, p.GetTenant(), r.addr)
		if err != nil {
			return err
		}
		if suppressed {
			outs[i].suppressed = true
			ev := events.ForMail(m, cmv1.Outcome_OUTCOME_SUPPRESSED, Stage)
			ev.At = now
			ev.Reason = "the address is on the tenant's suppression list since " + entry.AddedAt.Format(time.RFC3339)
			if entry.Reason != "" {
				ev.Reason += ": " + entry.Reason
			}
			return events.PublishMail(ctx, s.o.Bus, ev)
		}
		// The event goes first: once the mail is on mail.compose, rewrite
		// may report on it at once, and a timeline follows the EVENTS
		// stream's order. Should the mail's publish fail, the post is
		// retried until it succeeds.
		ev := events.ForMail(m, cmv1.Outcome_OUTCOME_COMPOSED, Stage)
		ev.At = now
		if err := events.PublishMail(ctx, s.o.Bus, ev); err != nil {
			return err
		}
		return s.o.Bus.Publish(ctx, bus.Subject(bus.ComposePrefix, p.GetTenant()), m, bus.MsgID(m.GetMailId(), "compose"))
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: post %s: %w", p.GetPostId(), err)
	}
	res := &fanOutResult{mailIDs: []string{}, inbox: []string{}, suppressed: []string{}}
	for _, o := range outs {
		switch {
		case o.inboxUser != "":
			res.inbox = append(res.inbox, o.inboxUser)
		case o.suppressed:
			res.suppressed = append(res.suppressed, o.mailID)
		default:
			res.mailIDs = append(res.mailIDs, o.mailID)
		}
	}
	if err := s.msgids.Put(ctx, msgindex.Entry{Tenant: p.GetTenant(), MessageID: messageID, PostID: p.GetPostId(),
		Model: p.GetThread().GetModel(), ThreadID: p.GetThread().GetId(), DisplayName: p.GetThread().GetDisplayName(), At: now.AsTime()}); err != nil {
		return nil, fmt.Errorf("ingest: post %s: %w", p.GetPostId(), err)
	}
	s.o.Log.Info("post fanned out", "tenant", p.GetTenant(), "post_id", p.GetPostId(),
		"thread", p.GetThread().GetModel()+"/"+p.GetThread().GetId(), "source", p.GetSource().String(),
		"followers", len(th.Followers), "recipients", len(rs), "emails", len(res.mailIDs), "inbox", len(res.inbox),
		"suppressed", len(res.suppressed))
	return res, nil
}

// mergeFollowers upserts the followers a post carries into its thread
// (and its display name), and returns the thread. A post whose followers
// change nothing writes nothing.
func (s *Service) mergeFollowers(ctx context.Context, p *cmv1.ChatterPost) (*threads.Thread, error) {
	th := p.GetThread()
	now := s.o.Now()
	return s.threads.Update(ctx, p.GetTenant(), th.GetModel(), th.GetId(), func(t *threads.Thread) error {
		before, _ := json.Marshal(t)
		if dn := th.GetDisplayName(); dn != "" {
			t.DisplayName = dn
		}
		for _, f := range p.GetFollowers() {
			if _, _, err := t.Follow(followerOf(f), now, false); err != nil {
				return err
			}
		}
		if after, _ := json.Marshal(t); t.Revision != 0 && bytes.Equal(before, after) {
			return threads.ErrNoChange
		}
		return nil
	})
}

// forEach calls f for 0..n-1, at most limit at once, and returns the
// first error; after an error it starts no more calls.
func forEach(ctx context.Context, n, limit int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(ctx, i); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}

// publishInbox publishes an in-app notification for an internal follower
// with the inbox preference, and returns the user token.
func (s *Service) publishInbox(ctx context.Context, p *cmv1.ChatterPost, pt *cmv1.Partner, at *timestamppb.Timestamp) (string, error) {
	user := InboxUser(pt)
	n := &cmv1.InboxNotification{
		Tenant: p.GetTenant(),
		// User is the partner id as the application knows it, even when
		// the subject has to carry a token derived from it.
		User:     cmp.Or(pt.GetPartnerId(), user),
		PostId:   p.GetPostId(),
		Thread:   p.GetThread(),
		Author:   p.GetAuthor(),
		Subject:  p.GetSubject(),
		BodyText: p.GetBodyText(),
		BodyHtml: p.GetBodyHtml(),
		At:       at,
	}
	// The EVENTS stream deduplicates across tenants, so the id names the
	// tenant as well as the post and the user.
	msgID := bus.MsgID(p.GetTenant()+"/"+p.GetPostId()+"/"+user, "inbox")
	if err := s.o.Bus.Publish(ctx, bus.Subject(bus.InboxEventPrefix, p.GetTenant(), user), n, msgID); err != nil {
		return "", err
	}
	return user, nil
}
