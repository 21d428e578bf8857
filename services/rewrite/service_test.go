package rewrite_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/rewrite"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

func next(t *testing.T, js jetstream.JetStream, stream, subject string) jetstream.Msg {
	t.Helper()
	ctx := context.Background()
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{FilterSubject: subject})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("nothing on %s: %v", subject, err)
	}
	return m
}

func TestServiceRewritesComposedMail(t *testing.T) {
	ns := testenv.NATS(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Connect(ns.ClientURL(), "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := b.EnsureStreams(ctx, bus.StreamOptions{Memory: true}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte("tenants:\n  acme:\n    alias_domain: example.com\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := rewrite.New(rewrite.Options{Bus: b, Config: cfg, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	go svc.Run(ctx)

	in := &cmv1.OutboundMail{MailId: "m1", Tenant: "acme", Author: &cmv1.Partner{Name: "Alice", Email: "alice@gmail.com"},
		Recipient: &cmv1.Partner{Email: "ann@example.org"}}
	if err := b.Publish(ctx, "mail.compose.acme", in, "m1:compose"); err != nil {
		t.Fatal(err)
	}
	var out cmv1.OutboundMail
	if err := proto.Unmarshal(next(t, b.JetStream(), bus.StreamRewritten, "mail.rewritten.acme").Data(), &out); err != nil {
		t.Fatal(err)
	}
	if got, want := out.GetFrom().GetHeader(), `"Alice" <notifications@example.com>`; got != want {
		t.Errorf("rewritten From = %s, want %s", got, want)
	}
	var ev cmv1.MailEvent
	if err := proto.Unmarshal(next(t, b.JetStream(), bus.StreamEvents, "events.mail.acme.rewritten").Data(), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.GetMailId() != "m1" || ev.GetFrom().GetReason() == "" {
		t.Errorf("rewritten event = %v, want mail m1 with the decision's reason", &ev)
	}

	// An invalid author fails the mail with a reason; nothing is rewritten.
	bad := &cmv1.OutboundMail{MailId: "m2", Tenant: "acme", Author: &cmv1.Partner{Email: "a@b.com\r\nBcc: x@y.com"}}
	if err := b.Publish(ctx, "mail.compose.acme", bad, "m2:compose"); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(next(t, b.JetStream(), bus.StreamEvents, "events.mail.acme.failed").Data(), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.GetMailId() != "m2" || ev.GetReason() == "" {
		t.Errorf("failed event = %v, want mail m2 with a reason", &ev)
	}
}
