package sender

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"mime"
	netmail "net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/emersion/go-message/mail"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var renderClock = time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC)

// sampleMail is a mail as quota publishes it on mail.ready.<tenant>.
func sampleMail() *cmv1.OutboundMail {
	return &cmv1.OutboundMail{
		MailId:    "01JD6Z8Q0M5V7RSW1X2Y3Z4A5B",
		Tenant:    "acme",
		PostId:    "p-42",
		Thread:    &cmv1.ThreadRef{Model: "crm.lead", Id: "42", DisplayName: "Big deal"},
		Author:    &cmv1.Partner{Name: "Zoë Durand", Email: "zoe@gmail.com"},
		Recipient: &cmv1.Partner{Name: "Ann Lee", Email: "ann@example.org"},
		Subject:   "Re: Big deal — prix révisé",
		BodyText:  "Hello Ann,\n\nThe revised price is 1 200 €.\n-- \nZoë",
		BodyHtml:  "<p>Hello Ann,</p><p>The revised price is <b>1&nbsp;200&nbsp;€</b>.</p>",
		MessageId: "p-42.1732440600@example.com",
		InReplyTo: "p-41.1732440000@example.com",
		References: []string{
			"p-40.1732430000@example.com", "p-41.1732440000@example.com", "p-42.1732440600@example.com",
		},
		From: &cmv1.FromDecision{
			Header:         "=?utf-8?q?Zo=C3=AB_Durand?= <notifications@example.com>",
			SendingAddress: "notifications@example.com",
			Server:         "relay",
		},
		Envelope: &cmv1.Envelope{MailFrom: "bounce@example.com", RcptTo: "ann@example.org"},
		ReplyTo:  "catchall@example.com",
		Headers: []*cmv1.Header{
			{Name: "Auto-Submitted", Value: "auto-generated"},
			{Name: "X-Auto-Response-Suppress", Value: "All"},
		},
	}
}

func TestRenderGolden(t *testing.T) {
	got, err := Render(sampleMail(), renderClock)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "render.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Render(sampleMail) differs from %s (go test -update rewrites it):\n%s", golden, got)
	}
	again, _ := Render(sampleMail(), renderClock)
	if !bytes.Equal(got, again) {
		t.Error("Render is not deterministic: two calls gave different bytes")
	}
}

// TestRenderParsesBack reads the rendered message with net/mail and with
// go-message, as a receiving client would.
func TestRenderParsesBack(t *testing.T) {
	m := sampleMail()
	raw, err := Render(m, renderClock)
	if err != nil {
		t.Fatal(err)
	}
	checkWireFormat(t, raw)

	msg, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var dec mime.WordDecoder
	subject, err := dec.DecodeHeader(msg.Header.Get("Subject"))
	if err != nil || subject != m.Subject {
		t.Errorf("decoded Subject = %q (%v), want %q", subject, err, m.Subject)
	}
	from, err := msg.Header.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Name != "Zoë Durand" || from[0].Address != "notifications@example.com" {
		t.Errorf("From = %v (%v), want Zoë Durand <notifications@example.com>", from, err)
	}
	to, err := msg.Header.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Name != "Ann Lee" || to[0].Address != "ann@example.org" {
		t.Errorf("To = %v (%v), want Ann Lee <ann@example.org>", to, err)
	}
	if date, err := msg.Header.Date(); err != nil || !date.Equal(renderClock) {
		t.Errorf("Date = %v (%v), want %v", date, err, renderClock)
	}
	for name, want := range map[string]string{
		"Message-Id":               "<p-42.1732440600@example.com>",
		"In-Reply-To":              "<p-41.1732440000@example.com>",
		"References":               "<p-40.1732430000@example.com> <p-41.1732440000@example.com> <p-42.1732440600@example.com>",
		"Reply-To":                 "catchall@example.com",
		"Mime-Version":             "1.0",
		"Auto-Submitted":           "auto-generated",
		"X-Auto-Response-Suppress": "All",
	} {
		if got := msg.Header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}

	r, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if refs, err := r.Header.MsgIDList("References"); err != nil || strings.Join(refs, " ") != strings.Join(m.References, " ") {
		t.Errorf("References = %v (%v), want %v", refs, err, m.References)
	}
	if s, err := r.Header.Subject(); err != nil || s != m.Subject {
		t.Errorf("go-message Subject = %q (%v), want %q", s, err, m.Subject)
	}
	parts := readParts(t, r)
	want := []part{
		{"text/plain", strings.ReplaceAll(m.BodyText, "\n", "\r\n") + "\r\n"},
		{"text/html", m.BodyHtml + "\r\n"},
	}
	if len(parts) != len(want) {
		t.Fatalf("parts = %v, want %v", parts, want)
	}
	for i := range want {
		if parts[i] != want[i] {
			t.Errorf("part %d = %q, want %q", i, parts[i], want[i])
		}
	}
}

type part struct{ typ, body string }

func readParts(t *testing.T, r *mail.Reader) []part {
	t.Helper()
	var parts []part
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatal(err)
		}
		h, ok := p.Header.(*mail.InlineHeader)
		if !ok {
			t.Fatalf("part %d is an attachment", len(parts))
		}
		typ, params, _ := h.ContentType()
		if params["charset"] != "utf-8" {
			t.Errorf("part %s charset = %q, want utf-8", typ, params["charset"])
		}
		body, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, part{typ, string(body)})
	}
}

// checkWireFormat checks RFC 5322 §2.1 and §2.3: CRLF only, lines of at
// most 998 octets, and (no SMTPUTF8, no 8BITMIME) 7-bit only.
func checkWireFormat(t *testing.T, raw []byte) {
	t.Helper()
	for i, l := range bytes.Split(raw, []byte("\r\n")) {
		if len(l) > 998 {
			t.Errorf("line %d has %d octets, want at most 998", i+1, len(l))
		}
		if bytes.ContainsAny(l, "\r\n") {
			t.Errorf("line %d has a bare CR or LF: %q", i+1, l)
		}
		for _, c := range l {
			if c >= 0x80 {
				t.Errorf("line %d has an 8-bit octet: %q", i+1, l)
				break
			}
		}
	}
}

func TestRenderBodies(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		html      string
		wantType  string
		wantParts []part
	}{
		{"text only", "plain\n", "", "text/plain", []part{{"text/plain", "plain\r\n"}}},
		{"no body", "", "", "text/plain", []part{{"text/plain", ""}}},
		{"html only", "", "<p>Hi&amp;bye</p><br>x", "multipart/alternative",
			[]part{{"text/plain", "Hi&bye\r\n\r\nx\r\n"}, {"text/html", "<p>Hi&amp;bye</p><br>x\r\n"}}},
		{"both", "t", "<i>h</i>", "multipart/alternative",
			[]part{{"text/plain", "t\r\n"}, {"text/html", "<i>h</i>\r\n"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sampleMail()
			m.BodyText, m.BodyHtml = tt.text, tt.html
			raw, err := Render(m, renderClock)
			if err != nil {
				t.Fatal(err)
			}
			checkWireFormat(t, raw)
			r, err := mail.CreateReader(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if typ, _, _ := r.Header.ContentType(); typ != tt.wantType {
				t.Errorf("Render(text %q, html %q) Content-Type = %s, want %s", tt.text, tt.html, typ, tt.wantType)
			}
			got := readParts(t, r)
			if len(got) != len(tt.wantParts) {
				t.Fatalf("Render(text %q, html %q) parts = %q, want %q", tt.text, tt.html, got, tt.wantParts)
			}
			for i := range got {
				if got[i] != tt.wantParts[i] {
					t.Errorf("Render(text %q, html %q) part %d = %q, want %q", tt.text, tt.html, i, got[i], tt.wantParts[i])
				}
			}
		})
	}
}

func TestRenderLongLines(t *testing.T) {
	m := sampleMail()
	m.Subject = strings.Repeat("très long sujet ", 40)
	m.BodyText = strings.Repeat("x", 5000) + "\n" + strings.Repeat("é", 3000)
	m.BodyHtml = "<p>" + strings.Repeat("y", 5000) + "</p>"
	m.References = nil
	for i := range 60 {
		m.References = append(m.References, strings.Repeat("r", 20)+"."+string(rune('a'+i%26))+"@example.com")
	}
	raw, err := Render(m, renderClock)
	if err != nil {
		t.Fatal(err)
	}
	checkWireFormat(t, raw)
	r, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := r.Header.Subject(); s != m.Subject {
		t.Errorf("long Subject = %q, want %q", s, m.Subject)
	}
	if refs, _ := r.Header.MsgIDList("References"); len(refs) != 60 {
		t.Errorf("long References has %d ids, want 60", len(refs))
	}
	parts := readParts(t, r)
	if want := strings.ReplaceAll(m.BodyText, "\n", "\r\n") + "\r\n"; len(parts) != 2 || parts[0].body != want {
		t.Errorf("long text part did not round-trip")
	}
}

func TestRenderRefuses(t *testing.T) {
	tests := []struct {
		name   string
		change func(*cmv1.OutboundMail)
	}{
		{"no From", func(m *cmv1.OutboundMail) { m.From = nil }},
		{"no recipient", func(m *cmv1.OutboundMail) { m.Recipient, m.Envelope = nil, nil }},
		{"no Message-ID", func(m *cmv1.OutboundMail) { m.MessageId = "" }},
		{"CRLF in From", func(m *cmv1.OutboundMail) { m.From.Header = "a@example.com\r\nBcc: x@y.com" }},
		{"CR in Reply-To", func(m *cmv1.OutboundMail) { m.ReplyTo = "a@example.com\rX: y" }},
		{"LF in extra header", func(m *cmv1.OutboundMail) {
			m.Headers = append(m.Headers, &cmv1.Header{Name: "X-A", Value: "1\nBcc: x@y.com"})
		}},
		{"bad header name", func(m *cmv1.OutboundMail) { m.Headers = append(m.Headers, &cmv1.Header{Name: "X A", Value: "1"}) }},
		{"reserved header", func(m *cmv1.OutboundMail) {
			m.Headers = append(m.Headers, &cmv1.Header{Name: "content-type", Value: "text/html"})
		}},
	}
	for _, tt := range tests {
		m := sampleMail()
		tt.change(m)
		if _, err := Render(m, renderClock); !errors.Is(err, ErrInvalidMail) {
			t.Errorf("Render(%s) error = %v, want %v", tt.name, err, ErrInvalidMail)
		}
	}
}

func TestRenderEncodesNonASCIIHeaders(t *testing.T) {
	m := sampleMail()
	m.Subject = "Affaire\nBcc: eve@example.net"       // encoded, so no field is injected
	m.From.Header = "Zoë <notifications@example.com>" // not encoded upstream
	m.Recipient.Name = "Åsa Öberg"
	m.Headers = append(m.Headers, &cmv1.Header{Name: "X-Thread", Value: "Affaire réglée"})
	raw, err := Render(m, renderClock)
	if err != nil {
		t.Fatal(err)
	}
	checkWireFormat(t, raw)
	r, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ field, want string }{{"From", "Zoë"}, {"To", "Åsa Öberg"}} {
		a, err := r.Header.AddressList(c.field)
		if err != nil || len(a) != 1 || a[0].Name != c.want {
			t.Errorf("%s = %v (%v), want name %q", c.field, a, err, c.want)
		}
	}
	if r.Header.Has("Bcc") {
		t.Errorf("a LF in Subject injected a Bcc field")
	}
	if s, err := r.Header.Subject(); err != nil || s != m.Subject {
		t.Errorf("Subject = %q (%v), want %q", s, err, m.Subject)
	}
	if v, err := r.Header.Text("X-Thread"); err != nil || v != "Affaire réglée" {
		t.Errorf("X-Thread = %q (%v), want %q", v, err, "Affaire réglée")
	}
}

func TestHTMLToText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"<p>Hello</p><p>World</p>", "Hello\n\nWorld"},
		{"a<br>b<br/>c", "a\nb\nc"},
		{"<b>bold</b>  and\n  <i>italic</i>", "bold and italic"},
		{"<style>p{color:red}</style><p>x</p><!-- note -->", "x"},
		{"Tom &amp; Jerry&nbsp;&lt;3", "Tom & Jerry <3"},
		{"<ul><li>one</li><li>two</li></ul>", "one\ntwo"},
	}
	for _, tt := range tests {
		if got := htmlToText(tt.in); got != tt.want {
			t.Errorf("htmlToText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
