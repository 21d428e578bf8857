package main

import (
	"context"
	"io"
	"log/slog"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/replytoken"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/quota"
	"github.com/emersion/go-message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

func testLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// checkSampleDelivery asserts what the sample post must produce: exactly
// two mails, to Ann and Carl, with the post's identity and content.
func checkSampleDelivery(t *testing.T, d *deps, a postAnswer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := d.capture.Wait(ctx, 2); err != nil {
		t.Fatal(err)
	}
	waitDrained(t, d.js)
	msgs := d.capture.Messages()
	if len(msgs) != 2 {
		t.Fatalf("captured %d mails, want exactly 2 (3 followers minus the author)", len(msgs))
	}
	var rcpts []string
	for _, m := range msgs {
		rcpts = append(rcpts, m.To...)
		checkSampleMail(t, m, a)
	}
	slices.Sort(rcpts)
	if want := []string{"ann@customer.example", "carl@example.com"}; !slices.Equal(rcpts, want) {
		t.Errorf("envelope recipients = %v, want %v", rcpts, want)
	}

	cfg, err := config.Load(d.configPath)
	if err != nil {
		t.Fatal(err)
	}
	key := quota.CounterKey("acme", quota.WindowOf(cfg.Tenant("acme"), time.Now()).Name)
	n, err := d.redis.Get(context.Background(), key).Int()
	if err != nil || n != 2 {
		t.Errorf("redis %s = %d (%v), want 2", key, n, err)
	}
}

func checkSampleMail(t *testing.T, m *smtpcapture.Message, a postAnswer) {
	t.Helper()
	// The envelope is the VERP form of the bounce address (mail-rules §4):
	// bounce+<token>@example.com, the token naming tenant, mail and
	// recipient. The test system signs with the development keys.
	keys := replytoken.DevKeys()
	local, domain, _ := strings.Cut(m.From, "@")
	tok, ok := strings.CutPrefix(local, "bounce+")
	if !ok || domain != "example.com" {
		t.Errorf("MAIL FROM = %q, want bounce+<token>@example.com", m.From)
	} else if c, err := keys.Verify(tok); err != nil || c.Kind != replytoken.KindBounce || c.Tenant != "acme" || c.Mail == "" ||
		len(m.To) != 1 || c.Recipient != strings.ToLower(m.To[0]) {
		t.Errorf("VERP token of %q = %+v, %v, want a bounce token for tenant acme, a mail and recipient %v", m.From, c, err, m.To)
	}
	h, err := m.Header()
	if err != nil {
		t.Fatalf("captured mail does not parse: %v", err)
	}
	to, err := mail.ParseAddress(h.Get("To"))
	if err != nil || len(m.To) != 1 || !strings.EqualFold(to.Address, m.To[0]) {
		t.Errorf("To header %q (%v) does not match envelope %v", h.Get("To"), err, m.To)
	}
	if got, want := h.Get("From"), `"Bob Seller" <notifications@example.com>`; got != want {
		t.Errorf("From = %s, want %s", got, want)
	}
	if got := h.Get("Subject"); got != "Contract signed" {
		t.Errorf("Subject = %q, want %q", got, "Contract signed")
	}
	wantID := "<" + a.MessageID + ">"
	if got := h.Get("Message-Id"); got != wantID {
		t.Errorf("Message-ID = %s, want %s", got, wantID)
	}
	if refs := strings.Fields(h.Get("References")); len(refs) == 0 || refs[len(refs)-1] != wantID {
		t.Errorf("References = %q, want it to end with %s", h.Get("References"), wantID)
	}
	if h.Get("Auto-Submitted") != "auto-generated" {
		t.Errorf("Auto-Submitted = %q, want auto-generated", h.Get("Auto-Submitted"))
	}
	if h.Get("X-Auto-Response-Suppress") != "All" {
		t.Errorf("X-Auto-Response-Suppress = %q, want All", h.Get("X-Auto-Response-Suppress"))
	}
	// Reply-To is reply+<token>@example.com, the token naming tenant,
	// thread, message and recipient (mail-rules §6).
	local, domain, _ = strings.Cut(h.Get("Reply-To"), "@")
	tok, ok = strings.CutPrefix(local, "reply+")
	want := replytoken.Claims{Kind: replytoken.KindReply, Tenant: "acme", ThreadModel: "crm.lead", ThreadID: "42",
		Message: a.MessageID, KeyID: "dev"}
	if len(m.To) == 1 {
		want.Recipient = strings.ToLower(m.To[0])
	}
	if c, err := keys.Verify(tok); !ok || domain != "example.com" || err != nil || c != want {
		t.Errorf("Reply-To %q carries %+v (%v), want reply+<token>@example.com with %+v", h.Get("Reply-To"), c, err, want)
	}
	text := mailText(t, m.Raw)
	if !strings.Contains(text, "The customer signed. Thanks everyone!") {
		t.Errorf("text part %q lacks the post's body", text)
	}
}

// mailText returns the text/plain part of raw.
func mailText(t *testing.T, raw []byte) string {
	t.Helper()
	e, err := message.Read(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("mail does not parse: %v", err)
	}
	var text string
	err = e.Walk(func(_ []int, p *message.Entity, err error) error {
		if err != nil {
			return err
		}
		if ct, _, _ := p.Header.ContentType(); ct == "text/plain" {
			b, err := io.ReadAll(p.Body)
			text = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking mail: %v", err)
	}
	return text
}

func TestPostReachesFollowersInProcess(t *testing.T) {
	d := startDeps(t)
	base := startInProcess(t, d)
	code, a := post(t, base, testAPIKey, samplePost)
	if code != 202 || a.PostID == "" || a.MessageID == "" {
		t.Fatalf("POST /v1/posts = %d %+v, want 202 with post and message ids", code, a)
	}
	checkSampleDelivery(t, d, a)
}

func TestPostOnNATSSubjectIsDelivered(t *testing.T) {
	d := startDeps(t)
	startInProcess(t, d)
	p := &cmv1.ChatterPost{
		Tenant:         "acme",
		Thread:         &cmv1.ThreadRef{Model: "helpdesk.ticket", Id: "7", DisplayName: "Printer on fire"},
		Author:         &cmv1.Partner{Name: "Desk Bot", Email: "bot@example.com", Internal: true},
		Subject:        "Ticket updated",
		BodyText:       "We are on it.",
		IdempotencyKey: "ticket-7-update-1",
		Followers:      []*cmv1.Follower{{Partner: &cmv1.Partner{Email: "dora@customer.example"}}},
	}
	data, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := d.js.Publish(ctx, bus.Subject(bus.PostPrefix, "acme"), data); err != nil {
		t.Fatal(err)
	}
	msgs, err := d.capture.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[0].To; len(got) != 1 || got[0] != "dora@customer.example" {
		t.Errorf("recipients = %v, want [dora@customer.example]", got)
	}
}

func TestBadInputIsRefusedAndNothingCrashes(t *testing.T) {
	d := startDeps(t)
	base := startInProcess(t, d)
	tests := []struct {
		name, key, body string
		want            int
	}{
		{"bad JSON", testAPIKey, `{"tenant": "acme",`, 400},
		{"no API key", "", samplePost, 401},
		{"wrong API key", "nope", samplePost, 401},
		{"missing tenant", testAPIKey, strings.Replace(samplePost, `"tenant": "acme",`, "", 1), 422},
		{"invalid author address", testAPIKey, strings.Replace(samplePost, `"email": "bob@example.com", "internal": true},
  "subject"`, `"email": "bob@@example", "internal": true},
  "subject"`, 1), 422},
		{"invalid follower address", testAPIKey, strings.Replace(samplePost, "ann@customer.example", "ann at customer", 1), 422},
	}
	for _, tt := range tests {
		code, a := post(t, base, tt.key, tt.body)
		if code != tt.want || a.Error == "" {
			t.Errorf("POST %s = %d %+v, want %d with an error message", tt.name, code, a, tt.want)
		}
	}

	// A malformed protobuf on the NATS subject ends in the dead-letter
	// stream with its reason.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.js.PublishMsg(ctx, &nats.Msg{Subject: "chatter.post.acme", Data: []byte("\xff\xfenot protobuf")}); err != nil {
		t.Fatal(err)
	}
	cons, err := d.js.CreateOrUpdateConsumer(ctx, bus.StreamDLQ, jetstream.ConsumerConfig{FilterSubject: "dlq.>"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(20 * time.Second))
	if err != nil {
		t.Fatalf("no dead letter for a malformed post: %v", err)
	}
	if m.Subject() != "dlq.ingest.acme" || m.Headers().Get(bus.HeaderDLQReason) == "" {
		t.Errorf("dead letter on %s with reason %q, want dlq.ingest.acme with a reason", m.Subject(), m.Headers().Get(bus.HeaderDLQReason))
	}

	// Every service is still up: a good post after all that is delivered.
	code, a := post(t, base, testAPIKey, samplePost)
	if code != 202 {
		t.Fatalf("POST after bad input = %d %+v, want 202", code, a)
	}
	checkSampleDelivery(t, d, a)
	if n := len(d.capture.Messages()); n != 2 {
		t.Errorf("captured %d mails, want 2: bad input must send nothing", n)
	}
}
