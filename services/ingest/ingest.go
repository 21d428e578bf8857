// Package ingest is where chatter enters chattermail. It takes posts from
// the public HTTP API (POST /v1/posts) and from the bus
// (chatter.post.<tenant>, stream POSTS), validates them, and fans each
// post out into one OutboundMail per email recipient on
// mail.compose.<tenant>, plus an InboxNotification on
// events.inbox.<tenant>.<user> for internal followers who prefer in-app
// notifications (mail-rules §6).
//
// The HTTP API only stores the post on POSTS and answers 202; the fan-out
// happens in Run, which consumes POSTS. Every output is published with a
// deterministic Nats-Msg-Id derived from the post id, so a redelivered or
// republished post does not produce a second copy of any mail.
//
// For now the recipients come from the post itself (its followers and
// recipients); the thread follower store and the suppression list come
// later.
package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage is the stage name in events, dead letters and consumer names.
const Stage = "ingest"

// Options configure a Service.
type Options struct {
	// Bus is the connection to NATS. Required.
	Bus *bus.Bus
	// Config holds the tenants: their API keys and alias domains. Required.
	Config *config.Config
	// Log receives one line per post; never bodies or API keys. Required.
	Log *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Workers is how many posts Run fans out at once; default 4.
	Workers int
	// MaxBodyBytes is the largest HTTP request body accepted; larger
	// bodies are answered 413. Default 1 MiB.
	MaxBodyBytes int64
}

// Service is the ingest stage: the HTTP API and the POSTS consumer.
type Service struct {
	o       Options
	handler http.Handler
}

// New returns an ingest stage.
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
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 20
	}
	s := &Service{o: o}
	s.handler = s.routes()
	return s, nil
}

// Run consumes chatter.post.* (stream POSTS, durable consumer "ingest")
// until ctx is done, fanning out each post. A post is acknowledged only
// after every mail and notification it causes has been stored; an
// undecodable or invalid post is dead-lettered on dlq.ingest.<tenant>.
func (s *Service) Run(ctx context.Context) error {
	return s.o.Bus.Consume(ctx, bus.ConsumerSpec{
		Stream:  bus.StreamPosts,
		Durable: Stage,
		Stage:   Stage,
		Workers: s.o.Workers,
	}, s.handle)
}

// handle fans out one post. Its result follows bus.Handler: Reject for
// input that can never succeed, a plain error (retried) when a publish
// fails, nil once everything is published.
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
	return s.fanOut(ctx, t, &p)
}

// fanOut publishes one OutboundMail and its composed event per email
// recipient, and one InboxNotification per inbox recipient.
func (s *Service) fanOut(ctx context.Context, t *config.Tenant, p *cmv1.ChatterPost) error {
	if p.GetSubtype() == "" {
		p.Subtype = SubtypeComment
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
	rs := recipients(p)
	emails, inbox := 0, 0
	for _, r := range rs {
		if r.inbox {
			if err := s.publishInbox(ctx, p, r.partner, now); err != nil {
				return err
			}
			inbox++
			continue
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
		}
		if err := s.o.Bus.Publish(ctx, bus.Subject(bus.ComposePrefix, p.GetTenant()), m, bus.MsgID(m.GetMailId(), "compose")); err != nil {
			return fmt.Errorf("ingest: post %s: %w", p.GetPostId(), err)
		}
		ev := events.ForMail(m, cmv1.Outcome_OUTCOME_COMPOSED, Stage)
		ev.At = now
		if err := events.PublishMail(ctx, s.o.Bus, ev); err != nil {
			return fmt.Errorf("ingest: post %s: %w", p.GetPostId(), err)
		}
		emails++
	}
	s.o.Log.Info("post fanned out", "tenant", p.GetTenant(), "post_id", p.GetPostId(),
		"thread", p.GetThread().GetModel()+"/"+p.GetThread().GetId(), "source", p.GetSource().String(),
		"recipients", len(rs), "emails", emails, "inbox", inbox)
	return nil
}

// publishInbox publishes an in-app notification for an internal follower
// with the inbox preference.
func (s *Service) publishInbox(ctx context.Context, p *cmv1.ChatterPost, pt *cmv1.Partner, at *timestamppb.Timestamp) error {
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
		return fmt.Errorf("ingest: post %s: %w", p.GetPostId(), err)
	}
	return nil
}
