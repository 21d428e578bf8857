package rewrite_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/replytoken"
	"github.com/chattermail/chattermail/platform/resolver"
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

// startService runs a rewrite stage for the tenants file doc, asking dns.
func startService(t *testing.T, doc string, dns *testenv.DNSServer, o rewrite.Options) *bus.Bus {
	t.Helper()
	ns := testenv.NATS(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Connect(ns.ClientURL(), "test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.EnsureStreams(ctx, bus.StreamOptions{Memory: true}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(doc), "")
	if err != nil {
		t.Fatal(err)
	}
	o.Bus, o.Config, o.Log = b, cfg, log
	o.Resolver = resolver.New([]string{dns.Addr()}, 200*time.Millisecond)
	o.Tokens = replytoken.DevKeys()
	svc, err := rewrite.New(o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

var thread = &cmv1.ThreadRef{Model: "crm.lead", Id: "42", DisplayName: "Big deal"}

func TestServiceRewritesComposedMail(t *testing.T) {
	dns := testenv.DNS(t)
	b := startService(t, "tenants:\n  acme:\n    alias_domain: example.com\n    servers: [{name: S1, host: h, from_filter: example.com}]\n", dns, rewrite.Options{})
	ctx := context.Background()

	in := &cmv1.OutboundMail{MailId: "p1-r1", Tenant: "acme", PostId: "p1", Thread: thread,
		Author:    &cmv1.Partner{Name: "Alice", Email: "alice@gmail.com"},
		Recipient: &cmv1.Partner{Name: "Ann", Email: "Ann@Customer.example"},
		MessageId: "p1@example.com", InReplyTo: "p0@example.com", References: []string{"p0@example.com", "p1@example.com"}}
	if err := b.Publish(ctx, "mail.compose.acme", in, "p1-r1:compose"); err != nil {
		t.Fatal(err)
	}
	var out cmv1.OutboundMail
	if err := proto.Unmarshal(next(t, b.JetStream(), bus.StreamRewritten, "mail.rewritten.acme").Data(), &out); err != nil {
		t.Fatal(err)
	}
	if got, want := out.GetFrom().GetHeader(), `"Alice" <notifications@example.com>`; got != want {
		t.Errorf("rewritten From = %s, want %s", got, want)
	}
	if got := out.GetFrom(); got.GetServer() != "S1" || got.GetStep() != cmv1.FromStep_FROM_STEP_NOTIFICATION_DOMAIN || !got.GetEncapsulated() || got.GetReason() == "" {
		t.Errorf("rewritten decision = %v, want server S1, notification domain, encapsulated, with a reason", got)
	}
	keys := replytoken.DevKeys()

	// VERP: bounce+<token>@example.com naming tenant, mail and recipient.
	local, domain, _ := strings.Cut(out.GetEnvelope().GetMailFrom(), "@")
	tok, ok := strings.CutPrefix(local, "bounce+")
	if !ok || domain != "example.com" {
		t.Fatalf("MAIL FROM = %s, want bounce+<token>@example.com", out.GetEnvelope().GetMailFrom())
	}
	if c, err := keys.Verify(tok); err != nil || c.Kind != replytoken.KindBounce || c.Tenant != "acme" || c.Mail != "p1-r1" || c.Recipient != "ann@customer.example" {
		t.Errorf("VERP token = %+v, %v, want tenant acme, mail p1-r1, recipient ann@customer.example", c, err)
	}
	if got := out.GetEnvelope().GetRcptTo(); got != "Ann@Customer.example" {
		t.Errorf("RCPT TO = %s, want Ann@Customer.example", got)
	}

	// Reply-To: reply+<token>@example.com naming tenant, thread, message, recipient.
	local, domain, _ = strings.Cut(out.GetReplyTo(), "@")
	tok, ok = strings.CutPrefix(local, "reply+")
	if !ok || domain != "example.com" {
		t.Fatalf("Reply-To = %s, want reply+<token>@example.com", out.GetReplyTo())
	}
	want := replytoken.Claims{Kind: replytoken.KindReply, Tenant: "acme", ThreadModel: "crm.lead", ThreadID: "42",
		Message: "p1@example.com", Recipient: "ann@customer.example", KeyID: "dev"}
	if c, err := keys.Verify(tok); err != nil || c != want {
		t.Errorf("reply token = %+v, %v, want %+v", c, err, want)
	}

	if out.GetMessageId() != "p1@example.com" || strings.Join(out.GetReferences(), " ") != "p0@example.com p1@example.com" {
		t.Errorf("Message-ID %s, References %v, want p1@example.com and [p0 p1]", out.GetMessageId(), out.GetReferences())
	}
	hdr := map[string]string{}
	for _, h := range out.GetHeaders() {
		hdr[h.GetName()] = h.GetValue()
	}
	if hdr["Auto-Submitted"] != "auto-generated" || hdr["X-Auto-Response-Suppress"] != "All" {
		t.Errorf("headers = %v, want Auto-Submitted: auto-generated and X-Auto-Response-Suppress: All", hdr)
	}

	var ev cmv1.MailEvent
	if err := proto.Unmarshal(next(t, b.JetStream(), bus.StreamEvents, "events.mail.acme.rewritten").Data(), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.GetMailId() != "p1-r1" || ev.GetFrom().GetReason() == "" || ev.GetFrom().GetHeader() != out.GetFrom().GetHeader() {
		t.Errorf("rewritten event = %v, want mail p1-r1 with the decision and its reason", &ev)
	}

	// An invalid author fails the mail with a reason; nothing is rewritten.
	failed, err := b.JetStream().CreateOrUpdateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{FilterSubject: "events.mail.acme.failed"})
	if err != nil {
		t.Fatal(err)
	}
	for i, email := range []string{"a@b.com\r\nBcc: x@y.com", "a@b.com, c@d.com", ""} {
		id := "bad" + string(rune('0'+i))
		bad := &cmv1.OutboundMail{MailId: id, Tenant: "acme", PostId: "p2", Thread: thread, Author: &cmv1.Partner{Email: email},
			Recipient: &cmv1.Partner{Email: "ann@customer.example"}, MessageId: "p2@example.com"}
		if err := b.Publish(ctx, "mail.compose.acme", bad, id+":compose"); err != nil {
			t.Fatal(err)
		}
		m, err := failed.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("no failed event for author %q: %v", email, err)
		}
		if err := proto.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.GetMailId() != id || !strings.Contains(ev.GetReason(), "invalid author") {
			t.Errorf("failed event for author %q = %v, want mail %s with the reason", email, &ev, id)
		}
	}
	s, err := b.JetStream().Stream(ctx, bus.StreamRewritten)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Info(ctx); info.State.Msgs != 1 {
		t.Errorf("REWRITTEN holds %d mails, want only the valid one", info.State.Msgs)
	}
}

// TestServiceRetriesDNSFailureThenRewrites: a DMARC lookup that keeps
// failing makes the mail wait and retry; after DNSAttempts it goes out as
// the notification address, with the reason and a warning. It is never
// lost and never sent as the author on a guess.
func TestServiceRetriesDNSFailureThenRewrites(t *testing.T) {
	dns := testenv.DNS(t)
	dns.Fail("_dmarc.yahoo.com")
	b := startService(t, `tenants:
  acme:
    alias_domain: example.com
    servers:
      - {name: keep, sequence: 1, host: h, from_filter: yahoo.com}
      - {name: own, sequence: 2, host: h, from_filter: example.com}
`, dns, rewrite.Options{DNSAttempts: 3, DNSRetry: func(int) time.Duration { return 50 * time.Millisecond }})
	in := &cmv1.OutboundMail{MailId: "m1", Tenant: "acme", PostId: "p1", Thread: thread, MessageId: "p1@example.com",
		Author: &cmv1.Partner{Name: "Yolanda", Email: "y@yahoo.com"}, Recipient: &cmv1.Partner{Email: "ann@customer.example"}}
	if err := b.Publish(context.Background(), "mail.compose.acme", in, "m1:compose"); err != nil {
		t.Fatal(err)
	}
	var out cmv1.OutboundMail
	if err := proto.Unmarshal(next(t, b.JetStream(), bus.StreamRewritten, "mail.rewritten.acme").Data(), &out); err != nil {
		t.Fatal(err)
	}
	f := out.GetFrom()
	if f.GetHeader() != `"Yolanda" <notifications@example.com>` || f.GetServer() != "own" || f.GetStep() != cmv1.FromStep_FROM_STEP_DMARC_MITIGATION ||
		!strings.Contains(f.GetWarning(), "DMARC lookup failed") {
		t.Errorf("decision after DNS failures = %v, want the notification address via own, DMARC mitigation, with a warning", f)
	}
	if n := dns.Queries("_dmarc.yahoo.com"); n < 3 {
		t.Errorf("%d DMARC questions, want one per attempt (3)", n)
	}
}
