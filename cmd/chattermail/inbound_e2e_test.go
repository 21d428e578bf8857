package main

import (
	"context"
	"fmt"
	"net"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/chattermail/chattermail/services/ingest/suppression"
)

// startInboundSystem runs the pipeline in process with inbound SMTP on a
// free port and returns the HTTP base URL and the SMTP address.
func startInboundSystem(t *testing.T, d *deps) (base, smtpAddr string) {
	t.Helper()
	smtpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startPipeline(t, d, pipelineOptions{SMTPListener: smtpLn}, nil), smtpLn.Addr().String()
}

// mailTo finds the captured mail sent to rcpt among msgs.
func mailTo(t *testing.T, msgs []*smtpcapture.Message, rcpt string) *smtpcapture.Message {
	t.Helper()
	for _, m := range msgs {
		if slices.Contains(m.To, rcpt) {
			return m
		}
	}
	t.Fatalf("no mail to %s among %d", rcpt, len(msgs))
	return nil
}

func recipientsOf(msgs []*smtpcapture.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.To...)
	}
	slices.Sort(out)
	return out
}

// TestInboundReplyAndBounceEndToEnd: a post is mailed to Ann and Carl;
// Ann replies over real SMTP to her Reply-To; the reply lands on the
// thread and reaches Bob and Carl, not Ann. Then Carl's copy bounces
// (5.1.1, to its VERP envelope sender): Carl is suppressed, and the next
// post reaches Ann only.
func TestInboundReplyAndBounceEndToEnd(t *testing.T) {
	d := startDeps(t)
	base, smtpAddr := startInboundSystem(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	code, a := post(t, base, testAPIKey, samplePost)
	if code != 200 && code != 201 && code != 202 {
		t.Fatalf("POST /v1/posts = %d %+v", code, a)
	}
	msgs, err := d.capture.Wait(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	annMail := mailTo(t, msgs, "ann@customer.example")
	h, err := annMail.Header()
	if err != nil {
		t.Fatal(err)
	}
	replyTo, err := mail.ParseAddress(h.Get("Reply-To"))
	if err != nil || !strings.HasPrefix(replyTo.Address, "reply+") {
		t.Fatalf("Reply-To = %q (%v), want reply+<token>@example.com", h.Get("Reply-To"), err)
	}

	reply := "From: Ann Buyer <ann@customer.example>\r\nTo: " + replyTo.Address + "\r\nSubject: Re: Contract signed\r\n" +
		"Message-ID: <ann-reply-1@customer.example>\r\nIn-Reply-To: <" + a.MessageID + ">\r\nReferences: <" + a.MessageID + ">\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\nWonderful, thank you!\r\n\r\nOn Tue, Bob Seller wrote:\r\n> The customer signed.\r\n"
	if err := testenv.SendSMTP(smtpAddr, "ann@customer.example", []string{replyTo.Address}, reply); err != nil {
		t.Fatalf("sending the reply: %v", err)
	}
	msgs, err = d.capture.Wait(ctx, 4)
	if err != nil {
		t.Fatal(err)
	}
	relayed := msgs[2:]
	if got, want := recipientsOf(relayed), []string{"bob@example.com", "carl@example.com"}; !slices.Equal(got, want) {
		t.Fatalf("the reply reached %v, want %v (the other followers, never its author)", got, want)
	}
	for _, m := range relayed {
		text := mailText(t, m.Raw)
		if !strings.Contains(text, "Wonderful, thank you!") || strings.Contains(text, "The customer signed.") {
			t.Errorf("relayed reply text = %q, want the reply without its quote", text)
		}
		rh, _ := m.Header()
		if !strings.Contains(rh.Get("References"), a.MessageID) {
			t.Errorf("relayed reply References = %q, want it to name %s", rh.Get("References"), a.MessageID)
		}
	}
	// A second delivery of the same reply (same Message-ID) is dropped.
	if err := testenv.SendSMTP(smtpAddr, "ann@customer.example", []string{replyTo.Address}, reply); err != nil {
		t.Fatalf("resending the reply: %v", err)
	}

	// Carl's first copy bounces to its VERP envelope sender.
	carl := mailTo(t, msgs[:2], "carl@example.com")
	if !strings.HasPrefix(carl.From, "bounce+") {
		t.Fatalf("envelope sender of Carl's copy = %q, want bounce+<token>@example.com", carl.From)
	}
	dsn := "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\nTo: " + carl.From + "\r\nSubject: Undelivered Mail Returned to Sender\r\n" +
		"Message-ID: <bounce-1@mx.example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n" +
		"--B\r\nContent-Type: text/plain\r\n\r\nUser unknown.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n" +
		"Final-Recipient: rfc822; carl@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n--B--\r\n"
	if err := testenv.SendSMTP(smtpAddr, "", []string{carl.From}, dsn); err != nil {
		t.Fatalf("sending the bounce: %v", err)
	}
	supp, err := suppression.Open(ctx, d.js, suppression.Options{})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if _, ok, err := supp.IsSuppressed(ctx, "acme", "carl@example.com"); err != nil || !ok {
			return fmt.Errorf("carl@example.com not suppressed yet (%v)", err)
		}
		return nil
	})

	code, _ = post(t, base, testAPIKey, strings.Replace(samplePost, "Contract signed", "Kick-off on Monday", 1))
	if code >= 300 {
		t.Fatalf("second post answered %d", code)
	}
	msgs, err = d.capture.Wait(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	waitDrained(t, d.js)
	msgs = d.capture.Messages()
	if got, want := recipientsOf(msgs[4:]), []string{"ann@customer.example"}; !slices.Equal(got, want) {
		t.Errorf("after the bounce the post reached %v, want %v (Carl suppressed); %d mails in all", got, want, len(msgs))
	}
	if len(msgs) != 5 {
		t.Errorf("captured %d mails, want 5 (2 + reply to 2 + 1; the duplicate reply dropped)", len(msgs))
	}
}

// TestInboundSMTPRefusesProbesEndToEnd sends open-relay probes and bad
// messages to the real server and checks every answer.
func TestInboundSMTPRefusesProbesEndToEnd(t *testing.T) {
	d := startDeps(t)
	_, smtpAddr := startInboundSystem(t, d)
	rcptTests := []struct {
		rcpt string
		code int
	}{
		{"someone@foreign.example", 550},
		{"@relay.example.com:victim@foreign.example", 550},
		{"\"victim@foreign.example\"@example.com", 550},
		{"victim%foreign.example@example.com", 550},
		{"victim!foreign.example@example.com", 550},
		{"postmaster@unknown-tenant.example", 550},
		{"reply+notatoken@example.com", 550},
		{"bob@example.com", 550},
	}
	for _, tt := range rcptTests {
		err := testenv.SendSMTP(smtpAddr, "probe@attacker.example", []string{tt.rcpt}, "Subject: x\r\n\r\nx\r\n")
		if got := testenv.SMTPCode(err); got != tt.code {
			t.Errorf("RCPT TO:<%s> = %d (%v), want %d", tt.rcpt, got, err, tt.code)
		}
	}
	msg := func(body string) string {
		return "From: a@b.example\r\nSubject: s\r\nMessage-ID: <x@b.example>\r\n\r\n" + body
	}
	dataTests := []struct {
		name, raw string
		code      int
	}{
		{"catchall without a thread", msg("hello\r\n"), 550},
		{"bare LF", "From: a@b.example\nSubject: s\n\nhello\n", 550},
		{"malformed header", "From a@b.example\r\nthis is not a header\r\n\r\nx\r\n", 550},
	}
	for _, tt := range dataTests {
		err := testenv.SendSMTP(smtpAddr, "a@b.example", []string{"catchall@example.com"}, tt.raw)
		if got := testenv.SMTPCode(err); got != tt.code {
			t.Errorf("DATA %s = %d (%v), want %d", tt.name, got, err, tt.code)
		}
	}
	// The server is still up and a bounce address still takes mail.
	if err := testenv.SendSMTP(smtpAddr, "", []string{"bounce@example.com"}, msg("Status: 5.1.1\r\n")); err != nil {
		t.Errorf("bounce address after the probes: %v", err)
	}
	if _, err := d.js.Stream(context.Background(), bus.StreamInbound); err != nil {
		t.Fatal(err)
	}
}
