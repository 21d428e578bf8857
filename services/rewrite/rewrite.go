// Package rewrite is the stage that decides each mail's outgoing identity
// (mail-rules §1-§6): the From header, the sending server, the envelope
// sender, the Reply-To, and the headers that keep auto-responders quiet.
// It consumes mail.compose.<tenant> and publishes mail.rewritten.<tenant>
// with the decision and its reason (FromDecision), which the rewritten
// event carries too.
//
// The rules, in the order they apply to one mail:
//
//   - the author must be exactly one address without CR, LF or NUL, else
//     the mail fails with a reason and nothing is sent (§4);
//   - the server and From are chosen as Odoo 17 does (§3, Rules.Decide):
//     a server whose from_filter lists the author's address, then its
//     domain (send as the author); the same for the notification address;
//     the first server without filter; the first server anyway; with no
//     servers, the default from filter;
//   - when that would send with an external author's own address, the
//     author domain's DMARC policy is looked up (with the organisational
//     domain's as fallback, cached for its TTL); quarantine or reject,
//     unless the tenant can sign for the domain, sends as the notification
//     address instead (§5, FROM_STEP_DMARC_MITIGATION). Authors on the
//     tenant's own organisational domain are not external;
//   - sent as the notification address, the From header carries the
//     author's name (or local part), quoted, escaped, RFC 2047-encoded
//     when not ASCII (§4);
//   - the envelope sender is the bounce address when it matches the
//     chosen server's filter, else the sending address; the bounce address
//     goes out in its VERP form bounce+<token>@<alias domain> per
//     recipient, and every envelope domain as IDNA (§4);
//   - Reply-To is reply+<token>@<alias domain>, a signed token naming
//     tenant, thread, message and recipient (package replytoken); every
//     copy of a post shares one Message-ID, References lists the parent
//     then the message itself, and Auto-Submitted: auto-generated and
//     X-Auto-Response-Suppress: All are set (§6).
//
// DNS failures never lose a mail: a DMARC lookup that fails temporarily
// makes the stage retry the mail with backoff (NakWithDelay), and after
// Options.DNSAttempts deliveries it sends as the notification address,
// which passes DMARC whatever the author's policy, with a warning in the
// decision.
package rewrite

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	"github.com/chattermail/chattermail/platform/resolver"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage is the stage name in events, dead letters and Nats-Msg-Id.
const Stage = "rewrite"

// Default retry of mails whose DMARC lookup failed temporarily.
const (
	DefaultDNSAttempts  = 5
	DefaultDNSRetryBase = 5 * time.Second
	DefaultDNSRetryMax  = 2 * time.Minute
)

// Options configure a Service.
type Options struct {
	Bus    *bus.Bus
	Config *config.Config
	Log    *slog.Logger
	// Resolver answers the DMARC lookups of mail-rules §5. Required.
	Resolver resolver.Resolver
	// Tokens signs the reply and VERP tokens. Required.
	Tokens TokenSigner
	// Now is the clock of events and of the DMARC cache; default time.Now.
	Now func() time.Time
	// Workers is how many mails are rewritten at once; default 4.
	Workers int
	// DNSAttempts is how many deliveries of a mail may end in a retry
	// because its DMARC lookup failed temporarily; the next one sends as
	// the notification address. Default 5.
	DNSAttempts int
	// DNSRetry is the delay before such a retry; default
	// bus.ExponentialBackoff(5s, 2m): about 5s, 10s, 20s, 40s.
	DNSRetry bus.Backoff
	// DMARC configures the DMARC cache; its Now defaults to Now.
	DMARC DMARCOptions
}

// Service is the rewrite stage.
type Service struct {
	o  Options
	rw *Rewriter
}

// New returns a rewrite stage. It compiles every tenant's rules and fails
// on a configuration error, naming the tenant and the key.
func New(o Options) (*Service, error) {
	if o.Bus == nil || o.Config == nil || o.Log == nil {
		return nil, errors.New("rewrite: Bus, Config and Log are required")
	}
	if o.Resolver == nil {
		return nil, errors.New("rewrite: Resolver is required (DMARC lookups, mail-rules §5)")
	}
	if o.Tokens == nil {
		return nil, errors.New("rewrite: Tokens is required (reply and VERP tokens)")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.DNSAttempts <= 0 {
		o.DNSAttempts = DefaultDNSAttempts
	}
	if o.DNSRetry == nil {
		o.DNSRetry = bus.ExponentialBackoff(DefaultDNSRetryBase, DefaultDNSRetryMax)
	}
	if o.DMARC.Now == nil {
		o.DMARC.Now = o.Now
	}
	rw, err := NewRewriter(o.Config, NewDMARCPolicies(o.Resolver, o.DMARC), o.Tokens)
	if err != nil {
		return nil, err
	}
	for _, id := range o.Config.IDs() {
		for _, w := range rw.Rules(id).Warnings() {
			o.Log.Warn("configuration would fail DMARC", "tenant", id, "warning", w)
		}
	}
	return &Service{o: o, rw: rw}, nil
}

// Run consumes mail.compose.* until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	return s.o.Bus.Consume(ctx, bus.ConsumerSpec{
		Stream:  bus.StreamCompose,
		Durable: Stage,
		Stage:   Stage,
		Workers: s.o.Workers,
	}, s.handle)
}

// handle rewrites one mail. Its result is settled by the bus: nil acks;
// bus.RetryAfter (a temporary DMARC failure) redelivers later; bus.Reject
// (undecodable, unknown tenant) dead-letters. Invalid input ends in a
// failed event and an ack: nothing is sent.
func (s *Service) handle(ctx context.Context, d *bus.Delivery) error {
	var m cmv1.OutboundMail
	if err := proto.Unmarshal(d.Data, &m); err != nil {
		return bus.Reject(fmt.Errorf("rewrite: undecodable OutboundMail: %w", err))
	}
	if s.rw.Rules(m.GetTenant()) == nil || m.GetTenant() != d.Tenant {
		return bus.Reject(fmt.Errorf("rewrite: unknown tenant %q on %s", m.GetTenant(), d.Subject))
	}
	on := DNSFailureError
	if d.Attempt >= s.o.DNSAttempts {
		on = DNSFailureRewrite
	}
	err := s.rw.Apply(ctx, &m, on)
	switch {
	case errors.Is(err, ErrDMARCTemporary):
		delay := s.o.DNSRetry(d.Attempt)
		s.o.Log.Warn("DMARC lookup failed; the mail waits", "tenant", m.GetTenant(), "mail_id", m.GetMailId(),
			"attempt", d.Attempt, "of", s.o.DNSAttempts, "retry_in", delay, "err", err)
		return bus.RetryAfter(err, delay)
	case errors.Is(err, ErrInvalidAuthor) || errors.Is(err, ErrInvalidMail):
		ev := events.ForMail(&m, cmv1.Outcome_OUTCOME_FAILED, Stage)
		ev.At = timestamppb.New(s.o.Now())
		ev.Reason = err.Error()
		s.o.Log.Warn("mail not sent: invalid identity", "tenant", m.GetTenant(), "mail_id", m.GetMailId(), "err", err)
		return events.PublishMail(ctx, s.o.Bus, ev)
	case err != nil:
		return err // temporary: redelivered with the consumer's backoff
	}
	if w := m.GetFrom().GetWarning(); w != "" {
		s.o.Log.Warn("From rules fell back", "tenant", m.GetTenant(), "mail_id", m.GetMailId(), "warning", w)
	}
	// The event goes first, so a mail's timeline never shows the next
	// stage's step before this one.
	ev := events.ForMail(&m, cmv1.Outcome_OUTCOME_REWRITTEN, Stage)
	ev.At = timestamppb.New(s.o.Now())
	ev.From = m.GetFrom()
	ev.Reason = m.GetFrom().GetReason()
	if err := events.PublishMail(ctx, s.o.Bus, ev); err != nil {
		return err
	}
	return s.o.Bus.Publish(ctx, bus.Subject(bus.RewrittenPrefix, m.GetTenant()), &m, bus.MsgID(m.GetMailId(), Stage))
}

// NewResolver returns the resolver for DMARC lookups from a DNS_SERVERS
// setting: comma-separated "host:port" (port 53 when omitted), each
// question timing out after timeout (default 5s); an empty setting takes
// the servers of /etc/resolv.conf.
func NewResolver(servers string, timeout time.Duration) (*resolver.DNS, error) {
	return resolver.FromList(servers, timeout)
}
