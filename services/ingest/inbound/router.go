package inbound

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/inbound/dsn"
	"github.com/chattermail/chattermail/services/ingest/inbound/quote"
	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/chattermail/chattermail/services/ingest/msgindex"
	"github.com/chattermail/chattermail/services/ingest/suppression"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage names the router in events, dead letters and its durable consumer
// on INBOUND ("inbound").
const Stage = "inbound"

// ThreadReader reads a thread's followers; *threads.Store is one.
type ThreadReader interface {
	Get(ctx context.Context, tenant, model, id string) (*threads.Thread, error)
}

// Suppressor writes the suppression list; *suppression.List is one.
type Suppressor interface {
	Suppress(ctx context.Context, tenant, address, reason, source string) (suppression.Entry, bool, error)
}

// Counter counts drops and outcomes by reason; the composition root backs
// it with Prometheus. Safe for concurrent use.
type Counter interface {
	Inc(outcome, reason string)
}

// Counts is an in-memory Counter, the default; tests read it.
type Counts struct {
	mu sync.Mutex
	m  map[string]int
}

// Inc implements Counter.
func (c *Counts) Inc(outcome, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[outcome+"/"+reason]++
}

// Get returns the count of outcome/reason.
func (c *Counts) Get(outcome, reason string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[outcome+"/"+reason]
}

// RouterOptions configure NewRouter.
type RouterOptions struct {
	// Bus carries INBOUND in, posts and events out. Required by Run and
	// Handle, not by Classify.
	Bus *bus.Bus
	// Config holds the tenants. Required.
	Config *config.Config
	// Tokens verifies reply and VERP tokens. Required.
	Tokens TokenVerifier
	// Index maps Message-IDs to threads. Required.
	Index MessageIndex
	// Threads gives the followers, to resolve authors. Required.
	Threads ThreadReader
	// Suppression is written by hard bounces. Required by Handle.
	Suppression Suppressor
	// State keeps dedup, rate and bounce counts. Required by Handle.
	State *State
	// Originals reads bodies stored outside the event. Required by Handle.
	Originals *BusSpool
	// Log gets one line per message and per drop. Required.
	Log *slog.Logger
	// Counter counts outcomes; default a *Counts (see Router.Counts).
	Counter Counter
	// Now is the clock; default time.Now.
	Now func() time.Time
	// MaxPerSender is how many messages one sender may send a tenant per
	// SenderWindow before the rest is dropped; default 20 (mail-rules §7).
	MaxPerSender int
	// SenderWindow is the window of MaxPerSender; default 120 minutes.
	SenderWindow time.Duration
	// UnknownUserBounces is how many hard bounces with an unknown-user
	// status (5.1.1, 5.1.10, 5.1.0, 5.1.2, 5.1.3, 5.1.6) suppress an
	// address; default 1.
	UnknownUserBounces int
	// HardBounces is how many other hard (5.x.x) bounces within
	// BounceWindow suppress an address; default 2. Soft (4.x.x) bounces
	// are only counted.
	HardBounces int
	// BounceWindow is the window of HardBounces; default 7 days.
	BounceWindow time.Duration
	// Workers is how many messages are routed at once; default 4.
	Workers int
	// Auth evaluates SPF, DKIM and DMARC of replies (RFC 8601 results on
	// the post; the tenant's inbound_auth decides what a mismatch does).
	// Nil skips authentication.
	Auth *Authenticator
}

// Router consumes INBOUND and routes each message (mail-rules §7).
type Router struct {
	o      RouterOptions
	counts *Counts
}

// NewRouter returns a router.
func NewRouter(o RouterOptions) (*Router, error) {
	if o.Config == nil || o.Tokens == nil || o.Index == nil || o.Threads == nil || o.Log == nil {
		return nil, errors.New("inbound: router needs Config, Tokens, Index, Threads and Log")
	}
	r := &Router{o: o, counts: &Counts{}}
	if r.o.Counter == nil {
		r.o.Counter = r.counts
	}
	if r.o.Now == nil {
		r.o.Now = time.Now
	}
	r.o.MaxPerSender = cmp.Or(r.o.MaxPerSender, 20)
	r.o.SenderWindow = cmp.Or(r.o.SenderWindow, 120*time.Minute)
	r.o.UnknownUserBounces = cmp.Or(r.o.UnknownUserBounces, 1)
	r.o.HardBounces = cmp.Or(r.o.HardBounces, 2)
	r.o.BounceWindow = cmp.Or(r.o.BounceWindow, 7*24*time.Hour)
	r.o.Workers = cmp.Or(r.o.Workers, 4)
	return r, nil
}

// Counts is the default Counter (empty when Options.Counter was given).
func (r *Router) Counts() *Counts { return r.counts }

// Decision is what Classify makes of one message.
type Decision struct {
	// Kind is "reply", "bounce" or "drop".
	Kind string
	// Reason says why a message is dropped (one of the Drop constants).
	Reason string
	// Via says how it was routed: "token", "references", "in-reply-to"
	// (replies); "verp", "rfc822" (bounces).
	Via    string
	Tenant string
	// Thread and ParentMessageID name what a reply answers.
	Thread          *cmv1.ThreadRef
	ParentMessageID string
	ParentPostID    string
	// Author of a reply: a follower's partner, or the raw address.
	Author      *cmv1.Partner
	KnownAuthor bool
	// TokenRecipient is the address the reply token was issued to; the
	// reply's From may differ (a forward, a colleague).
	TokenRecipient string
	Subject        string
	// Text and HTML are the reply with quotes and signatures stripped.
	Text, HTML string
	// Bounces are the attributed failures of a bounce.
	Bounces []Bounce
	// MessageID of the inbound message.
	MessageID string
}

// Bounce is one failed recipient of a bounce, attributed to its mail.
type Bounce struct {
	MailID, PostID, Recipient, Status, Diagnostic string
	Permanent                                     bool
}

// String renders a decision for logs and golden files.
func (d *Decision) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kind: %s\n", d.Kind)
	if d.Reason != "" {
		fmt.Fprintf(&b, "reason: %s\n", d.Reason)
	}
	if d.Via != "" {
		fmt.Fprintf(&b, "via: %s\n", d.Via)
	}
	if d.Thread != nil {
		fmt.Fprintf(&b, "thread: %s/%s\nparent: %s\n", d.Thread.GetModel(), d.Thread.GetId(), d.ParentMessageID)
	}
	if d.Author != nil {
		fmt.Fprintf(&b, "author: %q <%s> partner=%q known=%v\n", d.Author.GetName(), d.Author.GetEmail(), d.Author.GetPartnerId(), d.KnownAuthor)
		fmt.Fprintf(&b, "token recipient: %s\nsubject: %s\ntext:\n%s\n", d.TokenRecipient, d.Subject, d.Text)
	}
	for _, x := range d.Bounces {
		fmt.Fprintf(&b, "bounce: mail=%s recipient=%s status=%s permanent=%v\n  diagnostic: %s\n", x.MailID, x.Recipient, x.Status, x.Permanent, x.Diagnostic)
	}
	return b.String()
}

// Classify decides what a stored message is, without side effects: a
// bounce (attributed by VERP token, then by the quoted Message-ID), an
// automatic message to drop, or a reply routed by token, then References,
// then In-Reply-To (mail-rules §7). Errors are temporary lookup failures;
// unroutable mail is a "drop" decision.
func (r *Router) Classify(ctx context.Context, in *cmv1.InboundMail, raw []byte) (*Decision, error) {
	d := &Decision{Tenant: in.GetTenant()}
	t := r.o.Config.Tenant(in.GetTenant())
	if t == nil {
		return drop(d, DropNoRoute), nil
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return drop(d, DropNoRoute), nil
	}
	h := msg.Header
	d.MessageID = messageID(h)
	dir := NewDirectory(r.o.Config, r.o.Tokens)
	var rcpts []Recipient
	bounce := looksLikeBounce(h)
	for _, a := range in.GetRcptTo() {
		if rc, err := dir.Classify(a); err == nil && rc.Tenant == t.ID {
			rcpts = append(rcpts, rc)
			bounce = bounce || rc.Kind == KindBounce
		}
	}
	if bounce {
		return r.classifyBounce(ctx, d, t, rcpts, msg)
	}
	if reason := autoReplyReason(h, in.GetMailFrom()); reason != "" {
		return drop(d, reason), nil
	}
	// Step 3: the reply token, then References (newest first), then
	// In-Reply-To.
	for _, rc := range rcpts {
		if rc.Kind == KindReply {
			c := rc.Claims
			d.Via, d.Thread, d.ParentMessageID, d.TokenRecipient = "token", &cmv1.ThreadRef{Model: c.ThreadModel, Id: c.ThreadID}, c.Message, c.Recipient
			if e, err := r.o.Index.Lookup(ctx, t.ID, c.Message); err == nil {
				d.Thread.DisplayName, d.ParentPostID = e.DisplayName, e.PostID
			} else if temporary(err) {
				return nil, err
			}
			break
		}
	}
	if d.Thread == nil {
		refs := msgIDRE.FindAllStringSubmatch(h.Get("References"), 50)
		for i, id := range threadIDs(h) {
			e, err := r.o.Index.Lookup(ctx, t.ID, id)
			if err != nil {
				if temporary(err) {
					return nil, err
				}
				continue
			}
			d.Via = "references"
			if i >= len(refs) {
				d.Via = "in-reply-to"
			}
			d.Thread, d.ParentMessageID, d.ParentPostID = &cmv1.ThreadRef{Model: e.Model, Id: e.ThreadID, DisplayName: e.DisplayName}, e.MessageID, e.PostID
			break
		}
	}
	if d.Thread == nil {
		return drop(d, DropNoRoute), nil
	}
	d.Kind = "reply"
	d.Subject = decodeHeader(h.Get("Subject"))
	from, err := mail.ParseAddress(decodeHeaderKeepAddr(h.Get("From")))
	if err != nil {
		if in.GetMailFrom() == "" {
			return drop(d, DropNoRoute), nil
		}
		from = &mail.Address{Address: in.GetMailFrom()}
	}
	addr, err := kvkey.NormalizeAddress(from.Address)
	if err != nil {
		return drop(d, DropNoRoute), nil
	}
	d.Author = &cmv1.Partner{Name: decodeHeader(from.Name), Email: addr}
	th, err := r.o.Threads.Get(ctx, t.ID, d.Thread.GetModel(), d.Thread.GetId())
	if err != nil && !errors.Is(err, threads.ErrNotFound) {
		return nil, err
	}
	if th != nil {
		if f, _ := th.Lookup(addr); f != nil {
			d.KnownAuthor = true
			d.Author = &cmv1.Partner{Name: cmp.Or(f.Name, d.Author.GetName()), Email: f.Email, PartnerId: f.PartnerID, Internal: f.Internal}
		}
		if d.Thread.GetDisplayName() == "" {
			d.Thread.DisplayName = th.DisplayName
		}
	}
	rep, _ := quote.Extract(raw)
	d.Text = rep.Text
	d.HTML = quote.ToHTML(d.Text)
	if strings.TrimSpace(d.Text) == "" && d.Subject == "" {
		return drop(d, DropEmpty), nil
	}
	return d, nil
}

// temporary reports a lookup failure of the store itself, as opposed to
// an unknown or unusable Message-ID.
func temporary(err error) bool {
	return !errors.Is(err, msgindex.ErrNotFound) && strings.Contains(err.Error(), "msgindex: get ")
}

// decodeHeaderKeepAddr decodes encoded words for net/mail.
func decodeHeaderKeepAddr(v string) string { return strings.ToValidUTF8(v, "") }

func drop(d *Decision, reason string) *Decision {
	d.Kind, d.Reason = "drop", reason
	return d
}

// classifyBounce attributes a bounce (mail-rules §7 step 2): the VERP
// token names the mail and recipient; without one, the DSN's quoted
// Message-ID names the post and the Final-Recipient the copy.
func (r *Router) classifyBounce(ctx context.Context, d *Decision, t *config.Tenant, rcpts []Recipient, msg *mail.Message) (*Decision, error) {
	d.Kind = "bounce"
	rep, err := dsn.Parse(msg)
	if err != nil {
		rep = &dsn.Report{}
	}
	var verp *Recipient
	for i := range rcpts {
		if rcpts[i].Kind == KindBounce && rcpts[i].Claims != nil {
			verp = &rcpts[i]
		}
	}
	if verp != nil {
		d.Via = "verp"
		c := verp.Claims
		b := Bounce{MailID: c.Mail, PostID: postIDOf(c.Mail), Recipient: c.Recipient, Status: "5.0.0", Permanent: true}
		for _, x := range rep.Recipients {
			n, _ := kvkey.NormalizeAddress(x.FinalRecipient)
			if n == c.Recipient || len(rep.Recipients) == 1 {
				b.Status, b.Diagnostic, b.Permanent = cmp.Or(x.Status, b.Status), x.DiagnosticCode, x.Permanent()
				break
			}
		}
		d.Bounces = []Bounce{b}
		return d, nil
	}
	ids := []string{rep.OriginalMessageID}
	ids = append(ids, threadIDs(msg.Header)...)
	for _, id := range ids {
		if id == "" {
			continue
		}
		e, err := r.o.Index.Lookup(ctx, t.ID, id)
		if err != nil {
			if temporary(err) {
				return nil, err
			}
			continue
		}
		d.Via = "rfc822"
		for _, x := range rep.Recipients {
			if !x.Failed() {
				continue
			}
			n, err := kvkey.NormalizeAddress(x.FinalRecipient)
			if err != nil {
				continue
			}
			d.Bounces = append(d.Bounces, Bounce{MailID: mailID(t.ID, e.PostID, n), PostID: e.PostID, Recipient: n,
				Status: x.Status, Diagnostic: x.DiagnosticCode, Permanent: x.Permanent()})
		}
		break
	}
	if len(d.Bounces) == 0 {
		return drop(d, DropUnattributed), nil
	}
	return d, nil
}

// mailID is ingest.MailID: the post id, '-', a short hash of tenant and
// normalised address.
func mailID(tenant, postID, addr string) string {
	return postID + "-" + kvkey.Short(tenant+"\x00"+addr)
}

// postIDOf cuts the recipient hash off a mail id.
func postIDOf(mailID string) string {
	if i := strings.LastIndexByte(mailID, '-'); i > 0 {
		return mailID[:i]
	}
	return mailID
}

// Run consumes INBOUND (durable consumer "inbound") until ctx is done.
func (r *Router) Run(ctx context.Context) error {
	return r.o.Bus.Consume(ctx, bus.ConsumerSpec{Stream: bus.StreamInbound, Durable: Stage, Stage: Stage, Workers: r.o.Workers}, r.Handle)
}

// Handle routes one INBOUND message. Its result follows bus.Handler: an
// undecodable message is dead-lettered, a failed lookup or publish is
// retried; a routed or dropped message is acknowledged.
func (r *Router) Handle(ctx context.Context, dl *bus.Delivery) error {
	var in cmv1.InboundMail
	if err := proto.Unmarshal(dl.Data, &in); err != nil {
		return bus.Reject(fmt.Errorf("inbound: undecodable InboundMail: %w", err))
	}
	if in.GetTenant() != dl.Tenant {
		return bus.Reject(fmt.Errorf("inbound: mail of tenant %q on %s", in.GetTenant(), dl.Subject))
	}
	raw, err := r.o.Originals.Original(ctx, &in)
	if err != nil {
		return err
	}
	log := r.o.Log.With("tenant", in.GetTenant(), "inbound_id", in.GetInboundId())
	// Step 1: a Message-ID already processed is dropped.
	if id := in.GetMessageId(); id != "" {
		seen, err := r.o.State.Seen(ctx, in.GetTenant(), id)
		if err != nil {
			return err
		}
		if seen {
			r.count(log, "drop", DropDuplicate)
			return nil
		}
	}
	d, err := r.Classify(ctx, &in, raw)
	if err != nil {
		return err
	}
	switch d.Kind {
	case "bounce":
		err = r.applyBounce(ctx, log, &in, d)
	case "reply":
		err = r.applyReply(ctx, log, &in, d, raw)
	default:
		r.count(log, "drop", d.Reason)
	}
	if err != nil {
		return err
	}
	if id := in.GetMessageId(); id != "" {
		return r.o.State.MarkSeen(ctx, in.GetTenant(), id)
	}
	return nil
}

func (r *Router) count(log *slog.Logger, outcome, reason string) {
	r.o.Counter.Inc(outcome, reason)
	if outcome == "drop" {
		log.Info("inbound message dropped", "reason", reason)
	}
}

// applyReply enforces the per-sender rate, keeps the original and posts
// the reply on its thread through the normal pipeline (ingest then fans
// it out to the other followers, never to its author).
func (r *Router) applyReply(ctx context.Context, log *slog.Logger, in *cmv1.InboundMail, d *Decision, raw []byte) error {
	ok, err := r.o.State.AllowSender(ctx, d.Tenant, d.Author.GetEmail(), r.o.MaxPerSender, r.o.SenderWindow, r.o.Now())
	if err != nil {
		return err
	}
	if !ok {
		r.count(log, "drop", DropRateLimit)
		return nil
	}
	if err := r.o.Originals.Keep(ctx, in.GetInboundId(), raw); err != nil {
		return err
	}
	key := "inbound-" + kvkey.Short(d.Tenant+"\x00"+cmp.Or(d.MessageID, in.GetInboundId()))
	p := &cmv1.ChatterPost{
		Tenant:          d.Tenant,
		Thread:          d.Thread,
		ParentMessageId: d.ParentMessageID,
		ParentPostId:    d.ParentPostID,
		Author:          d.Author,
		Subject:         d.Subject,
		BodyText:        d.Text,
		BodyHtml:        d.HTML,
		IdempotencyKey:  key,
		PostedAt:        timestamppb.New(r.o.Now()),
		Source:          cmv1.PostSource_POST_SOURCE_INBOUND_REPLY,
		InboundId:       in.GetInboundId(),
	}
	if r.o.Auth != nil {
		a := r.o.Auth.Check(ctx, raw, net.ParseIP(hostOf(in.GetRemoteAddr())), in.GetHelo(), in.GetMailFrom())
		p.AuthenticationResults = a.Results
		if reason := authMismatch(d, a); reason != "" {
			switch r.o.Config.Tenant(d.Tenant).InboundAuth {
			case config.InboundAuthReject:
				log.Info("inbound reply refused", "reason", reason)
				r.count(log, "drop", DropAuthMismatch)
				return nil
			case config.InboundAuthFlag:
				p.AuthFlagged, p.AuthFlagReason = true, reason
			}
			log.Info("inbound reply not authenticated as its token's recipient", "reason", reason, "results", a.Results)
		}
	}
	if err := r.o.Bus.Publish(ctx, bus.Subject(bus.PostPrefix, d.Tenant), p, bus.MsgID(key, Stage)); err != nil {
		return err
	}
	if d.TokenRecipient != "" && d.ParentPostID != "" {
		ev := &cmv1.MailEvent{Tenant: d.Tenant, MailId: mailID(d.Tenant, d.ParentPostID, d.TokenRecipient), PostId: d.ParentPostID,
			Outcome: cmv1.Outcome_OUTCOME_REPLIED, At: timestamppb.New(r.o.Now()), Stage: Stage, Thread: d.Thread,
			Recipient: d.TokenRecipient, MessageId: d.ParentMessageID, Reason: "replied by email (inbound " + in.GetInboundId() + ")"}
		if err := events.PublishMail(ctx, r.o.Bus, ev); err != nil {
			return err
		}
	}
	r.o.Counter.Inc("reply", d.Via)
	log.Info("inbound reply posted", "via", d.Via, "thread", d.Thread.GetModel()+"/"+d.Thread.GetId(), "known_author", d.KnownAuthor,
		"sender_is_token_recipient", d.TokenRecipient == "" || d.TokenRecipient == d.Author.GetEmail())
	return nil
}

// unknownUser lists the statuses of a mailbox that does not exist (RFC
// 3463 §3.2): one such bounce suppresses by default.
var unknownUser = map[string]bool{"5.1.0": true, "5.1.1": true, "5.1.2": true, "5.1.3": true, "5.1.6": true, "5.1.10": true}

// applyBounce publishes a bounced event per failed recipient and counts
// the bounce toward suppression.
func (r *Router) applyBounce(ctx context.Context, log *slog.Logger, in *cmv1.InboundMail, d *Decision) error {
	now := r.o.Now()
	for _, b := range d.Bounces {
		n, err := r.o.State.CountBounce(ctx, d.Tenant, b.Recipient, b.Permanent, r.o.BounceWindow, now)
		if err != nil {
			return err
		}
		if !b.Permanent {
			r.o.Counter.Inc("bounce", "soft")
			log.Info("inbound soft bounce counted", "mail_id", b.MailID, "status", b.Status)
			continue
		}
		ev := &cmv1.MailEvent{Tenant: d.Tenant, MailId: b.MailID, PostId: b.PostID, Outcome: cmv1.Outcome_OUTCOME_BOUNCED,
			At: timestamppb.New(now), Stage: Stage, Recipient: b.Recipient, MessageId: b.PostID + "@" + r.o.Config.Tenant(d.Tenant).AliasDomain,
			Reason: strings.TrimSpace(b.Status + " " + b.Diagnostic), Smtp: &cmv1.SMTPReply{EnhancedCode: b.Status, Text: b.Diagnostic}}
		if e, err := r.o.Index.Lookup(ctx, d.Tenant, ev.MessageId); err == nil {
			ev.Thread = &cmv1.ThreadRef{Model: e.Model, Id: e.ThreadID, DisplayName: e.DisplayName}
		}
		if err := events.PublishMail(ctx, r.o.Bus, ev); err != nil {
			return err
		}
		r.o.Counter.Inc("bounce", "hard")
		threshold := r.o.HardBounces
		if unknownUser[b.Status] {
			threshold = r.o.UnknownUserBounces
		}
		if n >= threshold {
			reason := fmt.Sprintf("%d hard bounce(s): %s %s", n, b.Status, b.Diagnostic)
			if _, created, err := r.o.Suppression.Suppress(ctx, d.Tenant, b.Recipient, reason, "bounce"); err != nil {
				return err
			} else if created {
				r.o.Counter.Inc("suppressed", "bounce")
				log.Info("address suppressed after hard bounces", "mail_id", b.MailID, "status", b.Status, "bounces", n)
			}
		}
	}
	return nil
}

// authMismatch says why a reply's authentication does not vouch for its
// author: the reply token was issued to one recipient, but the message
// is not DMARC-authenticated as that recipient; or, without a token, its
// From domain's DMARC check failed. "" when nothing is wrong.
func authMismatch(d *Decision, a *Authentication) string {
	sender := a.AuthenticatedSender()
	switch {
	case d.TokenRecipient != "" && sender == "":
		return "the reply token was issued to " + d.TokenRecipient + ", but the message did not authenticate (dmarc=" + a.DMARC + ")"
	case d.TokenRecipient != "" && !strings.EqualFold(sender, d.TokenRecipient):
		return "the reply token was issued to " + d.TokenRecipient + ", but the message authenticated as " + sender
	case d.TokenRecipient == "" && a.DMARC == "fail":
		return "the sender's domain failed DMARC"
	}
	return ""
}
