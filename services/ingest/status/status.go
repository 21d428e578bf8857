// Package status keeps the timeline of every mail: composed, rewritten
// (with the From decision and its reason), suppressed, held until a
// release time, each delivery attempt with the remote SMTP reply, and the
// final delivered, bounced or failed, then replies.
//
// A Projector consumes the EVENTS stream (events.mail.>, durable consumer
// "status", shared by every replica) and folds each MailEvent into the
// mail's Timeline in the JetStream KV bucket "status", under the key
// "<tenant>.<mail id>". Folding is idempotent by the event's stream
// sequence: a redelivered event, or the same event replayed, changes
// nothing. Steps are ordered by stream sequence, which is the order the
// stages published them in. A timeline is kept for TTL after its last
// event.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"slices"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/events"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// Bucket is the JetStream KV bucket of timelines.
	Bucket = "status"
	// Durable is the projector's consumer on the EVENTS stream; it is
	// also its stage name in dead letters (dlq.status.<tenant>).
	Durable = "status"
	// TTL is how long a timeline is kept after its last event, as long as
	// the EVENTS stream keeps the events.
	TTL = 30 * 24 * time.Hour
	// MaxSteps bounds a timeline; beyond it the oldest steps after the
	// first are dropped.
	MaxSteps = 200
	// maxAttempts bounds the retries of a fold that keeps conflicting.
	maxAttempts = 50
)

// ErrNotFound is returned by Get for a mail without a timeline.
var ErrNotFound = errors.New("status: no such mail")

// SMTPReply is a remote server's answer to one delivery attempt.
type SMTPReply struct {
	// Code is the basic status code, for example 250 or 451.
	Code int32 `json:"code"`
	// EnhancedCode is the RFC 3463 code, for example "4.7.1".
	EnhancedCode string `json:"enhanced_code,omitempty"`
	// Text is the reply text.
	Text string `json:"text,omitempty"`
	// Host is the server that answered.
	Host string `json:"host,omitempty"`
}

// From is rewrite's identity decision, on a rewritten step.
type From struct {
	// Header is the From header as written.
	Header string `json:"header"`
	// SendingAddress is the address in the From header.
	SendingAddress string `json:"sending_address"`
	// Step names the rule that decided, for example "notification".
	Step string `json:"step"`
	// Reason explains the decision.
	Reason string `json:"reason"`
	// Server is the chosen outgoing server; empty for the default route.
	Server string `json:"server,omitempty"`
	// Warning is set when the rules fell back.
	Warning string `json:"warning,omitempty"`
}

// Step is one event in a mail's life.
type Step struct {
	// Outcome is the event's outcome word: composed, rewritten,
	// suppressed, held, released, deferred, delivered, bounced, failed,
	// replied.
	Outcome string `json:"outcome"`
	// At is when it happened, by the publishing stage's clock.
	At time.Time `json:"at"`
	// Stage is the service that published it.
	Stage string `json:"stage"`
	// Reason explains the outcome in words.
	Reason string `json:"reason,omitempty"`
	// Attempt counts delivery attempts, from 1.
	Attempt int32 `json:"attempt,omitempty"`
	// SMTP is the remote reply of a delivery attempt.
	SMTP *SMTPReply `json:"smtp,omitempty"`
	// NextAttemptAt is when a deferred mail is tried again.
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	// ReleaseAt is when a held mail is planned to be released.
	ReleaseAt *time.Time `json:"release_at,omitempty"`
	// From is the identity decision of a rewritten step.
	From *From `json:"from,omitempty"`
	// Seq is the event's sequence in the EVENTS stream.
	Seq uint64 `json:"seq"`
}

// Thread names the thread a mail belongs to.
type Thread struct {
	Model       string `json:"model"`
	ID          string `json:"id"`
	DisplayName string `json:"display_name,omitempty"`
}

// Timeline is everything known of one mail.
type Timeline struct {
	Tenant    string `json:"tenant"`
	MailID    string `json:"mail_id"`
	PostID    string `json:"post_id"`
	MessageID string `json:"message_id,omitempty"`
	// Recipient is the recipient's address.
	Recipient string  `json:"recipient"`
	Thread    *Thread `json:"thread,omitempty"`
	// State is the outcome of the latest step.
	State string `json:"state"`
	// UpdatedAt is the time of the latest step.
	UpdatedAt time.Time `json:"updated_at"`
	// Steps in stream order.
	Steps []Step `json:"timeline"`
	// Revision is the KV revision the timeline was read at.
	Revision uint64 `json:"-"`
}

// Options configure a Projector.
type Options struct {
	// Bus is the connection to NATS. Required.
	Bus *bus.Bus
	// Log receives warnings. Required.
	Log *slog.Logger
	// Replicas is the bucket's JetStream replica count; default 1.
	Replicas int
	// Workers is how many events are folded at once; default 4.
	Workers int
}

// Projector builds timelines from the EVENTS stream and reads them.
type Projector struct {
	o  Options
	kv jetstream.KeyValue
}

// Open creates the bucket if needed (idempotently) and returns a
// projector. Reading timelines needs no Run.
func Open(ctx context.Context, o Options) (*Projector, error) {
	if o.Bus == nil || o.Log == nil {
		return nil, errors.New("status: Bus and Log are required")
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	kv, err := o.Bus.JetStream().CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "chattermail: mail status timelines",
		History:     1,
		TTL:         TTL,
		Replicas:    max(o.Replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("status: bucket %s: %w", Bucket, err)
	}
	return &Projector{o: o, kv: kv}, nil
}

// Run folds events.mail.> from the EVENTS stream until ctx is done. The
// durable consumer starts at the beginning of the stream the first time,
// so timelines are rebuilt from whatever the stream still holds. An
// undecodable event, or one whose tenant differs from its subject's, is
// dead-lettered on dlq.status.<tenant>.
func (p *Projector) Run(ctx context.Context) error {
	return p.o.Bus.Consume(ctx, bus.ConsumerSpec{
		Stream:        bus.StreamEvents,
		Durable:       Durable,
		Stage:         Durable,
		FilterSubject: bus.MailEventPrefix + ".>",
		Workers:       p.o.Workers,
	}, p.handle)
}

func (p *Projector) handle(ctx context.Context, d *bus.Delivery) error {
	var ev cmv1.MailEvent
	if err := proto.Unmarshal(d.Data, &ev); err != nil {
		return bus.Reject(fmt.Errorf("status: undecodable MailEvent: %w", err))
	}
	if ev.GetTenant() != d.Tenant {
		return bus.Reject(fmt.Errorf("status: event for tenant %q published on %s", ev.GetTenant(), d.Subject))
	}
	if ev.GetMailId() == "" {
		return bus.Reject(errors.New("status: event without mail_id"))
	}
	return p.Apply(ctx, d.StreamSeq, &ev)
}

var mailIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,199}$`)

// Key is the KV key of a mail's timeline: "<tenant>.<mail id>" for the
// mail ids ingest makes ([a-z0-9-]), "<tenant>.x-<hash>" for any other.
func Key(tenant, mailID string) string {
	if mailIDRE.MatchString(mailID) {
		return tenant + "." + mailID
	}
	return tenant + ".x-" + kvkey.Token("mail", mailID)
}

// Apply folds ev, the event at sequence seq of the EVENTS stream, into
// its mail's timeline. Applying the same sequence twice changes nothing.
func (p *Projector) Apply(ctx context.Context, seq uint64, ev *cmv1.MailEvent) error {
	if bus.ValidTenant(ev.GetTenant()) != nil || ev.GetMailId() == "" {
		return fmt.Errorf("status: event without valid tenant and mail id")
	}
	key := Key(ev.GetTenant(), ev.GetMailId())
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		tl, err := p.get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			tl, err = &Timeline{Tenant: ev.GetTenant(), MailID: ev.GetMailId()}, nil
		}
		if err != nil {
			return err
		}
		if !fold(tl, seq, ev) {
			return nil
		}
		val, err := json.Marshal(tl)
		if err != nil {
			return fmt.Errorf("status: encode %s: %w", key, err)
		}
		if tl.Revision == 0 {
			_, err = p.kv.Create(ctx, key, val)
		} else {
			_, err = p.kv.Update(ctx, key, val, tl.Revision)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			time.Sleep(time.Duration(rand.IntN(attempt*2+1)) * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("status: write %s: %w", key, err)
		}
		return nil
	}
	return fmt.Errorf("status: %s: too many concurrent changes", key)
}

// fold adds ev to tl and reports whether tl changed.
func fold(tl *Timeline, seq uint64, ev *cmv1.MailEvent) bool {
	if slices.ContainsFunc(tl.Steps, func(s Step) bool { return s.Seq == seq }) {
		return false
	}
	st := Step{
		Outcome:       events.Outcome(ev.GetOutcome()),
		At:            ev.GetAt().AsTime().UTC(),
		Stage:         ev.GetStage(),
		Reason:        ev.GetReason(),
		Attempt:       ev.GetAttempt(),
		NextAttemptAt: optTime(ev.GetNextAttemptAt()),
		ReleaseAt:     optTime(ev.GetReleaseAt()),
		Seq:           seq,
	}
	if r := ev.GetSmtp(); r != nil {
		st.SMTP = &SMTPReply{Code: r.GetCode(), EnhancedCode: r.GetEnhancedCode(), Text: r.GetText(), Host: r.GetHost()}
	}
	if f := ev.GetFrom(); f != nil {
		st.From = &From{Header: f.GetHeader(), SendingAddress: f.GetSendingAddress(), Step: stepName(f.GetStep()),
			Reason: f.GetReason(), Server: f.GetServer(), Warning: f.GetWarning()}
	}
	tl.Steps = append(tl.Steps, st)
	slices.SortFunc(tl.Steps, func(a, b Step) int { return cmpUint(a.Seq, b.Seq) })
	if n := len(tl.Steps); n > MaxSteps {
		tl.Steps = slices.Delete(tl.Steps, 1, 1+n-MaxSteps)
	}
	last := tl.Steps[len(tl.Steps)-1]
	tl.State, tl.UpdatedAt = last.Outcome, last.At
	if v := ev.GetPostId(); v != "" {
		tl.PostID = v
	}
	if v := ev.GetMessageId(); v != "" {
		tl.MessageID = v
	}
	if v := ev.GetRecipient(); v != "" {
		tl.Recipient = v
	}
	if th := ev.GetThread(); th != nil && th.GetModel() != "" {
		tl.Thread = &Thread{Model: th.GetModel(), ID: th.GetId(), DisplayName: th.GetDisplayName()}
	}
	return true
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func optTime(ts *timestamppb.Timestamp) *time.Time {
	if ts == nil {
		return nil
	}
	t := ts.AsTime().UTC()
	return &t
}

// stepName is the lower-case name of a From step: "notification" for
// FROM_STEP_NOTIFICATION.
func stepName(s cmv1.FromStep) string {
	n := s.String()
	if len(n) > len("FROM_STEP_") {
		n = n[len("FROM_STEP_"):]
	}
	b := []byte(n)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Get returns the timeline of tenant's mail, or ErrNotFound. Another
// tenant's mail is not found.
func (p *Projector) Get(ctx context.Context, tenant, mailID string) (*Timeline, error) {
	if bus.ValidTenant(tenant) != nil {
		return nil, ErrNotFound
	}
	tl, err := p.get(ctx, Key(tenant, mailID))
	if err != nil {
		return nil, err
	}
	if tl.Tenant != tenant || tl.MailID != mailID {
		return nil, ErrNotFound
	}
	return tl, nil
}

func (p *Projector) get(ctx context.Context, key string) (*Timeline, error) {
	e, err := p.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("status: get %s: %w", key, err)
	}
	var tl Timeline
	if err := json.Unmarshal(e.Value(), &tl); err != nil {
		return nil, fmt.Errorf("status: timeline %s: %w", key, err)
	}
	tl.Revision = e.Revision()
	return &tl, nil
}
