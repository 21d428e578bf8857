package status_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/events"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/status"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var now = time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC)

func setup(t *testing.T) (*bus.Bus, *status.Projector) {
	t.Helper()
	ns := testenv.NATS(t)
	log := slog.New(slog.DiscardHandler)
	b, err := bus.Connect(ns.ClientURL(), "status-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := b.EnsureStreams(context.Background(), bus.StreamOptions{Memory: true}); err != nil {
		t.Fatal(err)
	}
	p, err := status.Open(context.Background(), status.Options{Bus: b, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return b, p
}

func run(t *testing.T, p *status.Projector) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

var mail = &cmv1.OutboundMail{MailId: "p1-aaaa", Tenant: "acme", PostId: "p1", MessageId: "p1@example.com",
	Thread: &cmv1.ThreadRef{Model: "crm.lead", Id: "42"}, Recipient: &cmv1.Partner{Email: "ann@example.org"}}

func event(o cmv1.Outcome, minute int, change func(*cmv1.MailEvent)) *cmv1.MailEvent {
	ev := events.ForMail(mail, o, "test")
	ev.At = timestamppb.New(now.Add(time.Duration(minute) * time.Minute))
	if change != nil {
		change(ev)
	}
	return ev
}

func outcomes(tl *status.Timeline) []string {
	var out []string
	for _, s := range tl.Steps {
		out = append(out, s.Outcome)
	}
	return out
}

// The projector follows one mail through quota, a 4xx and delivery, from
// the EVENTS stream.
func TestProjector(t *testing.T) {
	b, p := setup(t)
	run(t, p)
	ctx := context.Background()
	for _, ev := range []*cmv1.MailEvent{
		event(cmv1.Outcome_OUTCOME_COMPOSED, 0, nil),
		event(cmv1.Outcome_OUTCOME_REWRITTEN, 1, func(e *cmv1.MailEvent) {
			e.From = &cmv1.FromDecision{Header: "n@example.com", SendingAddress: "n@example.com", Step: cmv1.FromStep_FROM_STEP_DMARC_MITIGATION, Reason: "p=reject"}
		}),
		event(cmv1.Outcome_OUTCOME_HELD, 2, func(e *cmv1.MailEvent) { e.ReleaseAt = timestamppb.New(now.Add(15 * time.Hour)) }),
		event(cmv1.Outcome_OUTCOME_RELEASED, 900, nil),
		event(cmv1.Outcome_OUTCOME_DEFERRED, 901, func(e *cmv1.MailEvent) {
			e.Attempt, e.Smtp, e.NextAttemptAt = 1, &cmv1.SMTPReply{Code: 451, EnhancedCode: "4.3.0", Text: "later"}, timestamppb.New(now.Add(906*time.Minute))
		}),
		event(cmv1.Outcome_OUTCOME_DELIVERED, 906, func(e *cmv1.MailEvent) { e.Attempt, e.Smtp = 2, &cmv1.SMTPReply{Code: 250, Text: "ok"} }),
	} {
		if err := events.PublishMail(ctx, b, ev); err != nil {
			t.Fatal(err)
		}
	}
	var tl *status.Timeline
	testenv.Eventually(t, 10*time.Second, func() error {
		var err error
		// Workers fold concurrently: wait for every step, not only the last.
		tl, err = p.Get(ctx, "acme", "p1-aaaa")
		if err != nil || tl.State != "delivered" || len(tl.Steps) != 6 {
			return fmt.Errorf("Get = %+v, %v, want 6 steps, the last delivered", tl, err)
		}
		return nil
	})
	want := []string{"composed", "rewritten", "held", "released", "deferred", "delivered"}
	if got := outcomes(tl); !slices.Equal(got, want) {
		t.Errorf("timeline = %q, want %q", got, want)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"rewritten step", tl.Steps[1].From.Step, "dmarc_mitigation"},
		{"held until", *tl.Steps[2].ReleaseAt, now.Add(15 * time.Hour)},
		{"deferred reply", tl.Steps[4].SMTP.EnhancedCode, "4.3.0"},
		{"next attempt", *tl.Steps[4].NextAttemptAt, now.Add(906 * time.Minute)},
		{"delivery attempt", tl.Steps[5].Attempt, int32(2)},
		{"updated at", tl.UpdatedAt, now.Add(906 * time.Minute)},
		{"recipient", tl.Recipient, "ann@example.org"},
		{"thread", tl.Thread.Model + "/" + tl.Thread.ID, "crm.lead/42"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("timeline %s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if _, err := p.Get(ctx, "globex", "p1-aaaa"); !errors.Is(err, status.ErrNotFound) {
		t.Errorf("Get(globex, acme's mail) = %v, want ErrNotFound", err)
	}

	// A bad event is dead-lettered; the projector goes on.
	if _, err := b.JetStream().PublishMsg(ctx, &nats.Msg{Subject: "events.mail.acme.composed", Data: []byte("\xff\xff")}); err != nil {
		t.Fatal(err)
	}
	other := event(cmv1.Outcome_OUTCOME_COMPOSED, 0, func(e *cmv1.MailEvent) { e.Tenant = "globex" })
	if err := b.Publish(ctx, "events.mail.acme.composed", other, ""); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		st, err := b.JetStream().Stream(ctx, bus.StreamDLQ)
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err != nil || info.State.Msgs != 2 {
			return fmt.Errorf("DLQ holds %v messages (%v), want 2", info.State.Msgs, err)
		}
		return nil
	})
}

// Applying an event twice, or replaying the stream, changes nothing.
func TestApplyIsIdempotent(t *testing.T) {
	_, p := setup(t)
	ctx := context.Background()
	evs := []*cmv1.MailEvent{event(cmv1.Outcome_OUTCOME_COMPOSED, 0, nil), event(cmv1.Outcome_OUTCOME_DELIVERED, 1, nil)}
	// Out of order, and twice.
	for _, seq := range []uint64{2, 1, 2, 1, 2} {
		if err := p.Apply(ctx, seq, evs[seq-1]); err != nil {
			t.Fatal(err)
		}
	}
	tl, err := p.Get(ctx, "acme", "p1-aaaa")
	if err != nil || !slices.Equal(outcomes(tl), []string{"composed", "delivered"}) || tl.State != "delivered" {
		t.Errorf("after applying sequences 2,1,2,1,2: %+v, %v, want composed then delivered once each", tl, err)
	}
	for i := range status.MaxSteps + 10 {
		if err := p.Apply(ctx, uint64(100+i), event(cmv1.Outcome_OUTCOME_DEFERRED, 2+i, nil)); err != nil {
			t.Fatal(err)
		}
	}
	tl, _ = p.Get(ctx, "acme", "p1-aaaa")
	if len(tl.Steps) != status.MaxSteps || tl.Steps[0].Outcome != "composed" || tl.Steps[len(tl.Steps)-1].Seq != uint64(100+status.MaxSteps+9) {
		t.Errorf("a timeline of %d events keeps %d steps from %q, want %d from composed to the last", status.MaxSteps+12, len(tl.Steps), tl.Steps[0].Outcome, status.MaxSteps)
	}
}
