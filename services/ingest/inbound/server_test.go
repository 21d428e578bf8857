package inbound_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/inbound"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

type serverEnv struct {
	addr  string
	bus   *bus.Bus
	spool *inbound.BusSpool
}

// startServer runs an inbound server on 127.0.0.1:0 against a real
// in-process NATS server; change tunes its options.
func startServer(t *testing.T, change func(*inbound.ServerOptions)) *serverEnv {
	t.Helper()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.New(nc, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx := context.Background()
	if err := b.EnsureStreams(ctx, bus.StreamOptions{Memory: true}); err != nil {
		t.Fatal(err)
	}
	spool, err := inbound.OpenSpool(ctx, b, 1)
	if err != nil {
		t.Fatal(err)
	}
	keys, _, _ := tokens(t)
	o := inbound.ServerOptions{Config: testConfig(t), Tokens: keys, Spool: spool, Index: fakeIndex{}, Log: discard()}
	if change != nil {
		change(&o)
	}
	s, err := inbound.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return &serverEnv{addr: ln.Addr().String(), bus: b, spool: spool}
}

// stored returns the InboundMail messages on INBOUND.
func stored(t *testing.T, b *bus.Bus) []*cmv1.InboundMail {
	t.Helper()
	ctx := context.Background()
	s, err := b.JetStream().Stream(ctx, bus.StreamInbound)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(ctx)
	var out []*cmv1.InboundMail
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		var in cmv1.InboundMail
		if err := proto.Unmarshal(m.Data, &in); err != nil {
			t.Fatal(err)
		}
		out = append(out, &in)
	}
	return out
}

// TestServerStoresBeforeAnswering: once the client has its 250, the
// message is on inbound.mail.<tenant>, long local part and all; a body
// over the inline limit goes to the object store.
func TestServerStoresBeforeAnswering(t *testing.T) {
	env := startServer(t, nil)
	_, reply, _ := tokens(t)
	rcpt := "reply+" + reply + "@Example.COM"
	if len(reply) < 100 {
		t.Fatalf("token of %d characters; the test wants a long local part", len(reply))
	}
	if err := testenv.SendSMTP(env.addr, "ann@customer.example", []string{rcpt}, "From: ann@customer.example\r\nMessage-ID: <m1@customer.example>\r\nSubject: hi\r\n\r\nHello\r\n"); err != nil {
		t.Fatal(err)
	}
	big := "From: ann@customer.example\r\nMessage-ID: <m2@customer.example>\r\nSubject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 1500)
	if err := testenv.SendSMTP(env.addr, "ann@customer.example", []string{rcpt}, big); err != nil {
		t.Fatal(err)
	}
	got := stored(t, env.bus)
	if len(got) != 2 {
		t.Fatalf("INBOUND holds %d messages after two 250s, want 2", len(got))
	}
	if got[0].GetTenant() != "acme" || got[0].GetMessageId() != "m1@customer.example" || !strings.Contains(string(got[0].GetRaw()), "Hello") ||
		got[0].GetRcptTo()[0] != "reply+"+reply+"@example.com" || !strings.HasPrefix(string(got[0].GetRaw()), "Received: from ") {
		t.Errorf("stored %+v", got[0])
	}
	if got[1].GetObjectName() == "" || len(got[1].GetRaw()) != 0 {
		t.Fatalf("big message stored inline (%d bytes), want it in the object store", len(got[1].GetRaw()))
	}
	raw, err := env.spool.Original(context.Background(), got[1])
	if err != nil || !strings.HasSuffix(string(raw), big) {
		t.Errorf("Original(big) = %d bytes (%v), want the message", len(raw), err)
	}
}

func TestServerAnswers(t *testing.T) {
	env := startServer(t, func(o *inbound.ServerOptions) { o.MaxMessageBytes = 64 << 10 })
	_, reply, bounce := tokens(t)
	rcpt := "reply+" + reply + "@example.com"
	hdr := "From: ann@customer.example\r\nSubject: s\r\n"
	tests := []struct {
		name, from string
		rcpts      []string
		raw        string
		want       int
	}{
		{"reply", "ann@customer.example", []string{rcpt}, hdr + "\r\nok\r\n", 0},
		{"bounce to VERP", "", []string{"bounce+" + bounce + "@example.com"}, hdr + "\r\nx\r\n", 0},
		{"plain bounce address", "", []string{"bounce@example.com"}, hdr + "\r\nx\r\n", 0},
		{"catchall answering a known thread", "ann@customer.example", []string{"catchall@example.com"}, hdr + "In-Reply-To: <" + parentID + ">\r\n\r\nx\r\n", 0},
		{"catchall without a thread", "ann@customer.example", []string{"catchall@example.com"}, hdr + "References: <nope@x.example>\r\n\r\nx\r\n", 550},
		{"malformed header", "ann@customer.example", []string{rcpt}, "not a header line\r\n\r\nx\r\n", 550},
		{"broken MIME body", "ann@customer.example", []string{rcpt}, hdr + "Content-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\nno end", 0},
		{"invalid UTF-8", "ann@customer.example", []string{rcpt}, "From: \xff\xfe <ann@customer.example>\r\nSubject: \xc3\x28\r\n\r\n\xff\r\n", 0},
		{"encoded header injection", "ann@customer.example", []string{rcpt}, "From: ann@customer.example\r\nSubject: =?utf-8?q?hi=0D=0ABcc:_x@evil.example?=\r\n\r\nx\r\n", 0},
		{"foreign domain", "x@attacker.example", []string{"victim@foreign.example"}, hdr, 550},
		{"source route", "x@attacker.example", []string{"@example.com:victim@foreign.example"}, hdr, 550},
		{"quoted local part", "x@attacker.example", []string{`"victim@foreign.example"@example.com`}, hdr, 550},
		{"percent hack", "x@attacker.example", []string{"victim%foreign.example@example.com"}, hdr, 550},
		{"unknown tenant domain", "x@attacker.example", []string{"catchall@unknown.example"}, hdr, 550},
		{"forged token", "x@attacker.example", []string{"reply+" + reply[:len(reply)-2] + "aa@example.com"}, hdr, 550},
		{"token of another tenant's domain", "x@attacker.example", []string{"reply+" + reply + "@other.example"}, hdr, 550},
		{"bounce token under reply", "x@attacker.example", []string{"reply+" + bounce + "@example.com"}, hdr, 550},
		{"two tenants", "x@attacker.example", []string{rcpt, "catchall@other.example"}, hdr, 452},
	}
	for _, tt := range tests {
		err := testenv.SendSMTP(env.addr, tt.from, tt.rcpts, tt.raw)
		if got := testenv.SMTPCode(err); got != tt.want {
			t.Errorf("%s: send = %d (%v), want %d", tt.name, got, err, tt.want)
		}
	}
}

func TestServerRateLimits(t *testing.T) {
	env := startServer(t, func(o *inbound.ServerOptions) { o.MessagesPerIPPerMinute = 3; o.MaxConnectionsPerIP = 2 })
	_, reply, _ := tokens(t)
	rcpt := "reply+" + reply + "@example.com"
	for i := range 3 {
		if err := testenv.SendSMTP(env.addr, "a@b.example", []string{rcpt}, "Subject: s\r\n\r\nx\r\n"); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	if err := testenv.SendSMTP(env.addr, "a@b.example", []string{rcpt}, "Subject: s\r\n\r\nx\r\n"); testenv.SMTPCode(err) != 450 {
		t.Errorf("4th message in a minute = %v, want 450", err)
	}
	// The server releases a session's connection slot after the client
	// has gone, asynchronously: wait until two connections are greeted.
	var c1, c2 *smtp.Client
	dial := func() (*smtp.Client, error) {
		c, err := smtp.Dial(env.addr)
		if err != nil {
			return nil, err
		}
		if err := c.Hello("a"); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, c := range []*smtp.Client{c1, c2} {
			if c != nil {
				c.Close()
			}
		}
		var err error
		if c1, err = dial(); err != nil {
			return err
		}
		c2, err = dial()
		return err
	})
	defer c1.Close()
	defer c2.Close()
	if c3, err := dial(); testenv.SMTPCode(err) != 421 {
		if c3 != nil {
			c3.Close()
		}
		t.Errorf("3rd connection from one IP = %v, want 421", err)
	}
}

// sendRaw speaks SMTP over a plain TCP connection, writing body exactly
// as given (no line-end conversion), and returns the code of the answer
// to the end of DATA.
func sendRaw(t *testing.T, addr, rcpt, body string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := textproto.NewReader(bufio.NewReader(conn))
	expect := func(want int) {
		t.Helper()
		if c, msg, err := r.ReadResponse(want); err != nil {
			t.Fatalf("answer %d %s (%v), want %d", c, msg, err, want)
		}
	}
	expect(220)
	fmt.Fprintf(conn, "EHLO test\r\n")
	expect(250)
	fmt.Fprintf(conn, "MAIL FROM:<a@b.example>\r\n")
	expect(250)
	fmt.Fprintf(conn, "RCPT TO:<%s>\r\n", rcpt)
	expect(250)
	fmt.Fprintf(conn, "DATA\r\n")
	expect(354)
	go func() { _, _ = io.WriteString(conn, body+"\r\n.\r\n") }()
	c, _, _ := r.ReadResponse(0)
	return c
}

func TestServerRawAnswers(t *testing.T) {
	env := startServer(t, func(o *inbound.ServerOptions) { o.MaxMessageBytes = 64 << 10 })
	_, reply, _ := tokens(t)
	rcpt := "reply+" + reply + "@example.com"
	tests := []struct {
		name, body string
		want       int
	}{
		{"bare LF", "From: a@b.example\nSubject: s\n\nx", 550},
		{"bare LF in body", "From: a@b.example\r\nSubject: s\r\n\r\nx\ny", 550},
		{"oversize", "From: a@b.example\r\nSubject: s\r\n\r\n" + strings.Repeat(strings.Repeat("y", 900)+"\r\n", 80), 552},
		{"fine", "From: a@b.example\r\nSubject: s\r\n\r\nx", 250},
	}
	for _, tt := range tests {
		if got := sendRaw(t, env.addr, rcpt, tt.body); got != tt.want {
			t.Errorf("%s: end of DATA = %d, want %d", tt.name, got, tt.want)
		}
	}
}
