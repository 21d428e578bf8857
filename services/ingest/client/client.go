// Package client is the Go client of chattermail's NATS API, for other Go
// services: post on a thread (fire-and-forget on chatter.post.<tenant>, or
// request/reply on api.post.<tenant> to learn the mail ids), replay the
// mail outcome events of the tenant from any point
// (events.mail.<tenant>.<outcome>, stream EVENTS), and receive in-app
// notifications (events.inbox.<tenant>.<user>).
//
// A Client acts for one tenant. It needs a NATS connection whose user (or
// account) may use that tenant's subjects; README.md, section "API",
// lists the subject permissions. With per-tenant permissions, connect
// with nats.CustomInboxPrefix("_INBOX_<tenant>") so replies come back on
// subjects only that tenant may read.
//
//	nc, _ := nats.Connect(url, nats.UserCredentials("acme.creds"), nats.CustomInboxPrefix("_INBOX_acme"))
//	c, _ := client.New(nc, "acme")
//	a, err := c.Post(ctx, &cmv1.ChatterPost{...})
//	// a.MailIds: one per email recipient
package client

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Subjects and stream of the API.
const (
	// PostSubjectPrefix: chatter.post.<tenant>, captured by stream POSTS.
	PostSubjectPrefix = "chatter.post"
	// RequestSubjectPrefix: api.post.<tenant>, core request/reply.
	RequestSubjectPrefix = "api.post"
	// MailEventSubjectPrefix: events.mail.<tenant>.<outcome>, stream EVENTS.
	MailEventSubjectPrefix = "events.mail"
	// InboxSubjectPrefix: events.inbox.<tenant>.<user>, stream EVENTS.
	InboxSubjectPrefix = "events.inbox"
	// EventsStream is the replayable stream of events (30 days by default).
	EventsStream = "EVENTS"
	// DefaultTimeout bounds Post and Publish when the context has no
	// deadline.
	DefaultTimeout = 15 * time.Second
)

// ErrRefused wraps the reason chattermail gave for refusing a post.
var ErrRefused = errors.New("chattermail: post refused")

var tenantRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// Client talks to chattermail for one tenant. It is safe for concurrent
// use.
type Client struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	tenant string
	events string
}

// Option changes a Client's defaults.
type Option func(*Client)

// WithEventsStream makes ReplayMailEvents read the stream name instead of
// EventsStream: in a tenant's own NATS account, the stream that captures
// the imported events.mail.<tenant>.> (see README.md, "NATS accounts").
func WithEventsStream(name string) Option { return func(c *Client) { c.events = name } }

// New returns a client for tenant over nc. It does not take ownership of
// nc.
func New(nc *nats.Conn, tenant string, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("client: nil NATS connection")
	}
	if !tenantRE.MatchString(tenant) {
		return nil, fmt.Errorf("client: tenant %q must be 1-64 characters of a-z, 0-9, '-' or '_'", tenant)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("client: jetstream: %w", err)
	}
	c := &Client{nc: nc, js: js, tenant: tenant, events: EventsStream}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Tenant is the tenant the client acts for.
func (c *Client) Tenant() string { return c.tenant }

func (c *Client) prepare(ctx context.Context, p *cmv1.ChatterPost) (context.Context, context.CancelFunc, []byte, error) {
	if p.GetTenant() == "" {
		p = proto.Clone(p).(*cmv1.ChatterPost)
		p.Tenant = c.tenant
	}
	if p.GetTenant() != c.tenant {
		return nil, nil, nil, fmt.Errorf("client: post for tenant %q on a client for %q", p.GetTenant(), c.tenant)
	}
	data, err := proto.Marshal(p)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("client: marshal post: %w", err)
	}
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
	}
	return ctx, cancel, data, nil
}

// Post sends p on api.post.<tenant> and waits for chattermail's answer:
// the post id, the Message-ID every copy carries, and one mail id per
// email recipient, once the post is stored and fanned out. The tenant is
// filled in when empty. While no chattermail instance answers (no
// responders) the request is sent again until ctx is done. A refused post
// returns an error wrapping ErrRefused. Set p.IdempotencyKey to make retries safe: the same key
// gets the same answer and sends nothing twice.
//
// When the fan-out takes longer than chattermail waits (10s by default),
// the answer has PostId and MessageId, no mail ids, and Error set; Post
// then returns the answer and an error wrapping ErrRefused. Ask again
// with the same idempotency key.
func (c *Client) Post(ctx context.Context, p *cmv1.ChatterPost) (*cmv1.PostAccepted, error) {
	ctx, cancel, data, err := c.prepare(ctx, p)
	if err != nil {
		return nil, err
	}
	defer cancel()
	msg, err := c.request(ctx, RequestSubjectPrefix+"."+c.tenant, data)
	if err != nil {
		return nil, fmt.Errorf("client: request %s.%s: %w", RequestSubjectPrefix, c.tenant, err)
	}
	var a cmv1.PostAccepted
	if err := proto.Unmarshal(msg.Data, &a); err != nil {
		return nil, fmt.Errorf("client: undecodable answer: %w", err)
	}
	if a.GetError() != "" {
		return &a, fmt.Errorf("%w: %s", ErrRefused, a.GetError())
	}
	return &a, nil
}

// request sends a request, again while nobody answers (chattermail
// restarting): with no responder nothing received it, so sending it again
// is safe.
func (c *Client) request(ctx context.Context, subject string, data []byte) (*nats.Msg, error) {
	wait := 50 * time.Millisecond
	for {
		msg, err := c.nc.RequestWithContext(ctx, subject, data)
		if !errors.Is(err, nats.ErrNoResponders) {
			return msg, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

// Publish stores p on chatter.post.<tenant> and returns once the POSTS
// stream acknowledged it: the post is accepted and will be fanned out,
// and an invalid post ends in chattermail's dead-letter stream. A post
// with an idempotency key is published with a Nats-Msg-Id derived from
// it, so a republish within the stream's duplicate window is dropped;
// chattermail itself never fans out one key twice.
func (c *Client) Publish(ctx context.Context, p *cmv1.ChatterPost) error {
	ctx, cancel, data, err := c.prepare(ctx, p)
	if err != nil {
		return err
	}
	defer cancel()
	var opts []jetstream.PublishOpt
	if k := p.GetIdempotencyKey(); k != "" {
		opts = append(opts, jetstream.WithMsgID("client:"+c.tenant+":"+k))
	}
	m := &nats.Msg{Subject: PostSubjectPrefix + "." + c.tenant, Data: data, Header: nats.Header{}}
	m.Header.Set("Chattermail-Type", "chattermail.v1.ChatterPost")
	if _, err := c.js.PublishMsg(ctx, m, opts...); err != nil {
		return fmt.Errorf("client: publish %s: %w", m.Subject, err)
	}
	return nil
}

// Event is one mail outcome event read from the EVENTS stream.
type Event struct {
	*cmv1.MailEvent
	// Subject is events.mail.<tenant>.<outcome>.
	Subject string
	// Sequence is the event's sequence in the EVENTS stream: replay from
	// Sequence+1 to resume after it.
	Sequence uint64
	// Stored is when the stream stored it.
	Stored time.Time
}

// From says where a replay starts.
type From struct {
	// Sequence starts at this EVENTS stream sequence (inclusive).
	Sequence uint64
	// Time starts at the first event stored at or after Time; used when
	// Sequence is zero.
	Time time.Time
	// Outcome restricts the replay to one outcome ("delivered",
	// "bounced", ...); empty means every outcome.
	Outcome string
}

// ReplayMailEvents calls f with the tenant's mail events, oldest first,
// starting at from (the beginning of the stream when from is zero), then
// with each new event as it is published, until ctx is done or f returns
// an error (which it returns). It reads the EVENTS stream (30 days of
// events by default), or the stream WithEventsStream names. Nothing is
// stored on the server: keep the last Event.Sequence yourself to resume.
func (c *Client) ReplayMailEvents(ctx context.Context, from From, f func(Event) error) error {
	filter := MailEventSubjectPrefix + "." + c.tenant + ".>"
	if from.Outcome != "" {
		filter = MailEventSubjectPrefix + "." + c.tenant + "." + from.Outcome
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case from.Sequence > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from.Sequence
	case !from.Time.IsZero():
		t := from.Time
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	cons, err := c.js.OrderedConsumer(ctx, c.events, cfg)
	if err != nil {
		return fmt.Errorf("client: replay %s: %w", filter, err)
	}
	for {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			return fmt.Errorf("client: replay %s: %w", filter, err)
		}
		var ev cmv1.MailEvent
		if err := proto.Unmarshal(msg.Data(), &ev); err != nil {
			return fmt.Errorf("client: undecodable event on %s: %w", msg.Subject(), err)
		}
		e := Event{MailEvent: &ev, Subject: msg.Subject()}
		if md, err := msg.Metadata(); err == nil {
			e.Sequence, e.Stored = md.Sequence.Stream, md.Timestamp
		}
		if err := f(e); err != nil {
			return err
		}
	}
}

// SubscribeInbox calls f with each in-app notification for user (the
// partner id of an internal follower with the inbox preference; "*" for
// every user of the tenant) as it is published, until the returned
// subscription is unsubscribed. Past notifications stay replayable from
// the EVENTS stream on events.inbox.<tenant>.<user>.
func (c *Client) SubscribeInbox(user string, f func(*cmv1.InboxNotification)) (*nats.Subscription, error) {
	subject := InboxSubjectPrefix + "." + c.tenant + "." + user
	sub, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
		var n cmv1.InboxNotification
		if proto.Unmarshal(m.Data, &n) == nil {
			f(&n)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("client: subscribe %s: %w", subject, err)
	}
	return sub, nil
}
