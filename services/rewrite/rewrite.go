// Package rewrite is the stage that decides each mail's outgoing identity:
// the From header, the sending server, the envelope sender and the
// Reply-To, plus the headers that keep auto-responders quiet
// (mail-rules §3-§6). It consumes mail.compose.<tenant> and publishes
// mail.rewritten.<tenant> with the decision and its reason.
//
// The current rules send every mail as the tenant's notification address,
// with the author's name encapsulated, through the tenant's first server.
package rewrite

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage is the stage name in events, dead letters and Nats-Msg-Id.
const Stage = "rewrite"

// Options configure a Service.
type Options struct {
	Bus    *bus.Bus
	Config *config.Config
	Log    *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Workers is how many mails are rewritten at once; default 4.
	Workers int
}

// Service is the rewrite stage.
type Service struct {
	o Options
}

// New returns a rewrite stage.
func New(o Options) (*Service, error) {
	if o.Bus == nil || o.Config == nil || o.Log == nil {
		return nil, errors.New("rewrite: Bus, Config and Log are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	return &Service{o: o}, nil
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

func (s *Service) handle(ctx context.Context, d *bus.Delivery) error {
	var m cmv1.OutboundMail
	if err := proto.Unmarshal(d.Data, &m); err != nil {
		return bus.Reject(fmt.Errorf("rewrite: undecodable OutboundMail: %w", err))
	}
	t := s.o.Config.Tenant(m.GetTenant())
	if t == nil || m.GetTenant() != d.Tenant {
		return bus.Reject(fmt.Errorf("rewrite: unknown tenant %q on %s", m.GetTenant(), d.Subject))
	}
	if err := Apply(t, &m); err != nil {
		ev := events.ForMail(&m, cmv1.Outcome_OUTCOME_FAILED, Stage)
		ev.At = timestamppb.New(s.o.Now())
		ev.Reason = err.Error()
		s.o.Log.Warn("mail not sent: invalid identity", "tenant", m.GetTenant(), "mail_id", m.GetMailId(), "err", err)
		return events.PublishMail(ctx, s.o.Bus, ev)
	}
	if err := s.o.Bus.Publish(ctx, bus.Subject(bus.RewrittenPrefix, m.GetTenant()), &m, bus.MsgID(m.GetMailId(), Stage)); err != nil {
		return err
	}
	ev := events.ForMail(&m, cmv1.Outcome_OUTCOME_REWRITTEN, Stage)
	ev.At = timestamppb.New(s.o.Now())
	ev.From = m.GetFrom()
	ev.Reason = m.GetFrom().GetReason()
	return events.PublishMail(ctx, s.o.Bus, ev)
}

// ErrInvalidAuthor is returned for an author address with CR, LF or NUL,
// or without exactly one address (mail-rules §4).
var ErrInvalidAuthor = errors.New("rewrite: invalid author address")

// Apply sets m's From decision, envelope, Reply-To and identity headers
// for tenant t.
func Apply(t *config.Tenant, m *cmv1.OutboundMail) error {
	author := m.GetAuthor()
	if strings.ContainsAny(author.GetEmail()+author.GetName(), "\r\n\x00") ||
		author.GetEmail() == "" || strings.ContainsAny(author.GetEmail(), ",;<> ") {
		return fmt.Errorf("%w: %q", ErrInvalidAuthor, author.GetEmail())
	}
	notification := t.NotificationAddress()
	name := author.GetName()
	if name == "" {
		name, _, _ = strings.Cut(author.GetEmail(), "@")
	}
	server := ""
	if len(t.Servers) > 0 {
		server = t.Servers[0].Name
	}
	m.From = &cmv1.FromDecision{
		Header:         FormatAddress(name, notification),
		SendingAddress: notification,
		Step:           cmv1.FromStep_FROM_STEP_NOTIFICATION,
		Reason:         "every mail is sent as the notification address " + notification,
		Server:         server,
		Encapsulated:   !strings.EqualFold(author.GetEmail(), notification),
	}
	m.Envelope = &cmv1.Envelope{MailFrom: t.BounceAddress(), RcptTo: m.GetRecipient().GetEmail()}
	m.ReplyTo = t.CatchallAddress()
	m.Headers = append(m.Headers[:0],
		&cmv1.Header{Name: "Auto-Submitted", Value: "auto-generated"},
		&cmv1.Header{Name: "X-Auto-Response-Suppress", Value: "All"},
	)
	return nil
}

// FormatAddress renders a From header value: "name" <addr>, with '"' and
// '\' escaped (RFC 5322 §3.2.4) and a non-ASCII name as an RFC 2047
// encoded word.
func FormatAddress(name, addr string) string {
	if name == "" {
		return addr
	}
	for _, r := range name {
		if r > 0x7e {
			return mime.QEncoding.Encode("utf-8", name) + " <" + addr + ">"
		}
	}
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(name)
	return `"` + esc + `" <` + addr + `>`
}
