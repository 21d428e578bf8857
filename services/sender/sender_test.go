package sender

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

const testPassword = "s3cret-pa55"

// harness runs a sender against an in-process NATS server and collects
// the mail events it stores on the EVENTS stream.
type harness struct {
	t      *testing.T
	bus    *bus.Bus
	svc    *Service
	events chan *cmv1.MailEvent
	logs   *lockedBuffer
}

// lockedBuffer is a testenv.Buffer.
type lockedBuffer = testenv.Buffer

// start runs a sender for the tenants document tenants (in which
// PASSWORD_FILE names a file holding testPassword). o's Bus, Config and
// Log are filled in; zero retry settings become test-sized ones.
func start(t *testing.T, tenants string, o Options, tweak ...func(*Service)) *harness {
	t.Helper()
	ns := testenv.NATS(t)
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sender log:\n%s", logs)
		}
	})
	b, err := bus.Connect(ns.ClientURL(), "sender-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.EnsureStreams(ctx, bus.StreamOptions{Memory: true}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte(testPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(strings.ReplaceAll(tenants, "PASSWORD_FILE", pw)), dir)
	if err != nil {
		t.Fatal(err)
	}
	o.Bus, o.Config, o.Log = b, cfg, log
	if o.RetryBase == 0 {
		o.RetryBase, o.RetryMax = 50*time.Millisecond, 200*time.Millisecond
	}
	if o.HeloName == "" {
		o.HeloName = "sender.test"
	}
	o.DialTimeout, o.CommandTimeout = 5*time.Second, 10*time.Second
	svc, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tweak {
		f(svc)
	}
	h := &harness{t: t, bus: b, svc: svc, events: make(chan *cmv1.MailEvent, 100), logs: logs}

	cons, err := b.JetStream().OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.MailEventPrefix + ".>"},
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var ev cmv1.MailEvent
		if err := proto.Unmarshal(m.Data(), &ev); err != nil {
			t.Errorf("undecodable event on %s: %v", m.Subject(), err)
			return
		}
		h.events <- &ev
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		cc.Stop()
	})
	return h
}

func (h *harness) publish(m *cmv1.OutboundMail, msgID string) {
	h.t.Helper()
	if err := h.bus.Publish(context.Background(), bus.Subject(bus.ReadyPrefix, m.GetTenant()), m, msgID); err != nil {
		h.t.Fatal(err)
	}
}

// next returns the next mail event, which must have outcome want.
func (h *harness) next(want cmv1.Outcome) *cmv1.MailEvent {
	h.t.Helper()
	select {
	case ev := <-h.events:
		if ev.GetOutcome() != want {
			h.t.Fatalf("next event = %s (reason %q), want %s", ev.GetOutcome(), ev.GetReason(), want)
		}
		if ev.GetStage() != Stage || ev.GetAt() == nil {
			h.t.Errorf("event stage = %q, at = %v; want %q and a time", ev.GetStage(), ev.GetAt(), Stage)
		}
		return ev
	case <-time.After(15 * time.Second):
		h.t.Fatalf("no event, want %s", want)
		return nil
	}
}

// nextOf returns the next mail event about mailID, skipping others.
func (h *harness) nextOf(mailID string) *cmv1.MailEvent {
	h.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev := <-h.events:
			if ev.GetMailId() == mailID {
				return ev
			}
		case <-timeout:
			h.t.Fatalf("no event for %s", mailID)
			return nil
		}
	}
}

// quiet checks that no event arrives for a while.
func (h *harness) quiet(d time.Duration) {
	h.t.Helper()
	select {
	case ev := <-h.events:
		h.t.Errorf("unexpected event %s for %s (reason %q)", ev.GetOutcome(), ev.GetMailId(), ev.GetReason())
	case <-time.After(d):
	}
}

// readyDrained waits until the READY work queue holds no message, that
// is until every ready mail was acked or terminated.
func (h *harness) readyDrained() {
	h.t.Helper()
	testenv.Eventually(h.t, 15*time.Second, func() error {
		s, err := h.bus.JetStream().Stream(context.Background(), bus.StreamReady)
		if err != nil {
			return err
		}
		if n := s.CachedInfo().State.Msgs; n > 0 {
			return fmt.Errorf("READY holds %d messages", n)
		}
		return nil
	})
}

func (h *harness) delivered(mailID string) (deliveredRecord, bool) {
	h.t.Helper()
	e, err := h.svc.kv.Get(context.Background(), deliveredKey(mailID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return deliveredRecord{}, false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	var r deliveredRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		h.t.Fatalf("delivered value %q: %v", e.Value(), err)
	}
	return r, true
}

// readyMail is a mail for tenant acme through the server named server.
func readyMail(id, server string) *cmv1.OutboundMail {
	m := sampleMail()
	m.MailId = id
	m.From.Server = server
	return m
}

func listen(t *testing.T) *smtpcapture.Server {
	t.Helper()
	c, err := smtpcapture.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// serverYAML is one entry of a tenant's servers list.
func serverYAML(name, addr, tlsMode string, auth bool) string {
	host, port, _ := net.SplitHostPort(addr)
	s := fmt.Sprintf("      - name: %s\n        host: %s\n        port: %s\n        tls: %s\n", name, host, port, tlsMode)
	if auth {
		s += "        username: acme\n        password_file: PASSWORD_FILE\n"
	}
	return s
}

func tenantsYAML(servers ...string) string {
	return "tenants:\n  acme:\n    alias_domain: example.com\n    servers:\n" + strings.Join(servers, "") +
		"  solo:\n    alias_domain: solo.example\n"
}

func TestDelivers(t *testing.T) {
	capture := listen(t)
	h := start(t, tenantsYAML(serverYAML("relay", capture.Addr(), "none", false)), Options{})
	m := readyMail("m1", "relay")
	h.publish(m, "m1:quota")

	ev := h.next(cmv1.Outcome_OUTCOME_DELIVERED)
	if ev.GetMailId() != "m1" || ev.GetAttempt() != 1 || ev.GetRecipient() != "ann@example.org" || ev.GetMessageId() != m.GetMessageId() {
		t.Errorf("delivered event = %v, want mail m1, attempt 1, recipient ann@example.org", ev)
	}
	if r := ev.GetSmtp(); r.GetCode() != 250 || r.GetHost() != "127.0.0.1" {
		t.Errorf("delivered reply = %v, want 250 from 127.0.0.1", r)
	}
	msgs := capture.Messages()
	if len(msgs) != 1 {
		t.Fatalf("captured %d messages, want 1", len(msgs))
	}
	got := msgs[0]
	if got.From != "bounce@example.com" || strings.Join(got.To, ",") != "ann@example.org" {
		t.Errorf("envelope = %s → %v, want bounce@example.com → [ann@example.org]", got.From, got.To)
	}
	want, err := Render(m, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The Date differs; everything from the body on must be the rendered bytes.
	_, gotBody, _ := bytes.Cut(got.Raw, []byte("\r\n\r\n"))
	_, wantBody, _ := bytes.Cut(want, []byte("\r\n\r\n"))
	if !bytes.Equal(gotBody, wantBody) {
		t.Errorf("captured body =\n%s\nwant\n%s", gotBody, wantBody)
	}
	hdr, err := got.Header()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"From":           m.GetFrom().GetHeader(),
		"To":             `"Ann Lee" <ann@example.org>`,
		"Message-Id":     "<" + m.GetMessageId() + ">",
		"Reply-To":       "catchall@example.com",
		"Auto-Submitted": "auto-generated",
	} {
		if v := hdr.Get(name); v != want {
			t.Errorf("captured %s = %q, want %q", name, v, want)
		}
	}
	rec, ok := h.delivered("m1")
	if !ok || rec.Code != 250 || rec.Server != "relay" || rec.Attempt != 1 {
		t.Errorf("delivered[m1] = %+v, %v; want code 250 from relay at attempt 1", rec, ok)
	}
	h.readyDrained()
}

func TestDuplicateReadyMessageIsSentOnce(t *testing.T) {
	capture := listen(t)
	h := start(t, tenantsYAML(serverYAML("relay", capture.Addr(), "none", false)), Options{})
	m := readyMail("m-dup", "relay")
	// Two copies at once (different Nats-Msg-Id, so the stream keeps both),
	// then a third after the first delivery.
	h.publish(m, "copy-1")
	h.publish(m, "copy-2")
	h.next(cmv1.Outcome_OUTCOME_DELIVERED)
	h.readyDrained()
	h.publish(m, "copy-3")
	h.readyDrained()

	if n := len(capture.Messages()); n != 1 {
		t.Errorf("captured %d messages for three copies of one mail, want 1", n)
	}
	// The re-published delivered event has the same Nats-Msg-Id: the
	// stream keeps one.
	h.quiet(300 * time.Millisecond)
	if got := strings.Count(h.logs.String(), "duplicate suppressed"); got != 2 {
		t.Errorf(`log has %d "duplicate suppressed", want 2`, got)
	}
}

func TestDefersThenDelivers(t *testing.T) {
	capture := listen(t)
	var calls atomic.Int32
	capture.SetReject(func(_, _ string) error {
		if calls.Add(1) == 1 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, try again later"}
		}
		return nil
	})
	h := start(t, tenantsYAML(serverYAML("relay", capture.Addr(), "none", false)), Options{})
	h.publish(readyMail("m-grey", "relay"), "m-grey:quota")

	ev := h.next(cmv1.Outcome_OUTCOME_DEFERRED)
	if r := ev.GetSmtp(); r.GetCode() != 451 || r.GetEnhancedCode() != "4.7.1" || r.GetText() != "greylisted, try again later" {
		t.Errorf("deferred reply = %v, want 451 4.7.1 greylisted, try again later", r)
	}
	if ev.GetAttempt() != 1 {
		t.Errorf("deferred attempt = %d, want 1", ev.GetAttempt())
	}
	if wait := ev.GetNextAttemptAt().AsTime().Sub(ev.GetAt().AsTime()); wait < 45*time.Millisecond || wait > 55*time.Millisecond {
		t.Errorf("deferred next attempt in %s, want RetryBase 50ms ±10 %%", wait)
	}
	for _, want := range []string{"C: EHLO sender.test", "C: RCPT TO:<ann@example.org>", "S: 451 4.7.1 greylisted"} {
		if !strings.Contains(ev.GetTranscript(), want) {
			t.Errorf("deferred transcript lacks %q:\n%s", want, ev.GetTranscript())
		}
	}
	if !strings.Contains(ev.GetReason(), "451") {
		t.Errorf("deferred reason = %q, want the 451 reply", ev.GetReason())
	}
	ev = h.next(cmv1.Outcome_OUTCOME_DELIVERED)
	if ev.GetAttempt() != 2 || ev.GetTranscript() != "" {
		t.Errorf("delivered attempt = %d, transcript %q; want attempt 2 and no transcript", ev.GetAttempt(), ev.GetTranscript())
	}
	if n := len(capture.Messages()); n != 1 {
		t.Errorf("captured %d messages, want 1", n)
	}
}

func TestBouncesOnPermanentRefusal(t *testing.T) {
	capture := listen(t)
	var calls atomic.Int32
	capture.SetReject(func(_, _ string) error {
		calls.Add(1)
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	})
	h := start(t, tenantsYAML(serverYAML("relay", capture.Addr(), "none", false)), Options{})
	h.publish(readyMail("m-gone", "relay"), "m-gone:quota")

	ev := h.next(cmv1.Outcome_OUTCOME_BOUNCED)
	if r := ev.GetSmtp(); r.GetCode() != 550 || r.GetEnhancedCode() != "5.1.1" || r.GetHost() != "127.0.0.1" {
		t.Errorf("bounced reply = %v, want 550 5.1.1 from 127.0.0.1", r)
	}
	if !strings.Contains(ev.GetTranscript(), "S: 550 5.1.1 no such user") {
		t.Errorf("bounced transcript lacks the refusal:\n%s", ev.GetTranscript())
	}
	h.readyDrained()
	h.quiet(5 * 50 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Errorf("RCPT tried %d times, want 1 (a 5xx is never retried)", n)
	}
	if _, ok := h.delivered("m-gone"); ok {
		t.Error("a bounced mail is in the delivered set")
	}
}

func TestFailsAfterMaxLifetime(t *testing.T) {
	capture := listen(t)
	capture.SetReject(func(_, _ string) error {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "shutting down"}
	})
	h := start(t, tenantsYAML(serverYAML("relay", capture.Addr(), "none", false)), Options{
		RetryBase: 20 * time.Millisecond, RetryMax: 40 * time.Millisecond, MaxLifetime: 300 * time.Millisecond,
	})
	h.publish(readyMail("m-old", "relay"), "m-old:quota")

	attempts := 0
	for {
		select {
		case ev := <-h.events:
			attempts++
			switch ev.GetOutcome() {
			case cmv1.Outcome_OUTCOME_DEFERRED:
				if ev.GetAttempt() != int32(attempts) {
					t.Errorf("deferred event %d has attempt %d", attempts, ev.GetAttempt())
				}
				continue
			case cmv1.Outcome_OUTCOME_FAILED:
				if !strings.Contains(ev.GetReason(), "max lifetime") || ev.GetSmtp().GetCode() != 421 || ev.GetTranscript() == "" {
					t.Errorf("failed event = %v, want the lifetime reason, the last 421 reply and a transcript", ev)
				}
				if attempts < 2 {
					t.Errorf("failed at attempt %d, want a few deferrals first", attempts)
				}
			default:
				t.Fatalf("event %s, want deferred then failed", ev.GetOutcome())
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no failed event after %d attempts", attempts)
		}
		break
	}
	h.readyDrained()
}

func TestNeverSendsCredentialsInClearText(t *testing.T) {
	// A listener that counts connections: with tls: none the sender must
	// not even connect to a server it would have to log in to.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	// And a server without STARTTLS for tls: opportunistic.
	capture := listen(t)
	h := start(t, tenantsYAML(
		serverYAML("plain-auth", ln.Addr().String(), "none", true),
		serverYAML("opp-auth", capture.Addr(), "opportunistic", true),
	), Options{})

	h.publish(readyMail("m-clear", "plain-auth"), "m-clear:quota")
	ev := h.next(cmv1.Outcome_OUTCOME_FAILED)
	if !strings.Contains(ev.GetReason(), ErrClearTextAuth.Error()) || !strings.Contains(ev.GetReason(), "tls: none") {
		t.Errorf("failed reason = %q, want %q and the tls mode", ev.GetReason(), ErrClearTextAuth)
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("the sender opened %d connections to a server it may not log in to, want 0", n)
	}

	h.publish(readyMail("m-strip", "opp-auth"), "m-strip:quota")
	ev = h.next(cmv1.Outcome_OUTCOME_DEFERRED)
	if !strings.Contains(ev.GetReason(), ErrClearTextAuth.Error()) {
		t.Errorf("deferred reason = %q, want %q", ev.GetReason(), ErrClearTextAuth)
	}
	if tr := ev.GetTranscript(); !strings.Contains(tr, "C: EHLO") || strings.Contains(tr, "AUTH PLAIN") || strings.Contains(tr, "MAIL FROM") {
		t.Errorf("transcript = \n%s\nwant EHLO and neither AUTH nor MAIL", tr)
	}
	if len(capture.Messages()) != 0 {
		t.Error("a mail was sent without the login its server requires")
	}
	plain := base64.StdEncoding.EncodeToString([]byte("\x00acme\x00" + testPassword))
	if logs := h.logs.String(); strings.Contains(logs, testPassword) || strings.Contains(logs, plain) {
		t.Error("the log contains the password")
	}
}

func TestStartTLSRequired(t *testing.T) {
	capture := listen(t) // offers no STARTTLS
	h := start(t, tenantsYAML(serverYAML("strict", capture.Addr(), "starttls", false)), Options{})
	h.publish(readyMail("m-tls", "strict"), "m-tls:quota")
	ev := h.next(cmv1.Outcome_OUTCOME_DEFERRED)
	if !strings.Contains(ev.GetReason(), "does not offer STARTTLS") || ev.GetSmtp().GetCode() != 0 {
		t.Errorf("deferred = %q, code %d; want the missing STARTTLS and code 0", ev.GetReason(), ev.GetSmtp().GetCode())
	}
	if len(capture.Messages()) != 0 {
		t.Error("a mail went out in clear text to a server with tls: starttls")
	}
}

func TestConnectionFailureIsTemporary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	h := start(t, tenantsYAML(serverYAML("down", addr, "none", false)), Options{})
	h.publish(readyMail("m-down", "down"), "m-down:quota")
	ev := h.next(cmv1.Outcome_OUTCOME_DEFERRED)
	if ev.GetSmtp().GetCode() != 0 || ev.GetSmtp().GetHost() != "127.0.0.1" || !strings.Contains(ev.GetReason(), "connect") {
		t.Errorf("deferred = %v, want code 0 from 127.0.0.1 and a connect error", ev)
	}
	if ev2 := h.next(cmv1.Outcome_OUTCOME_DEFERRED); ev2.GetAttempt() != 2 {
		t.Errorf("second deferral attempt = %d, want 2", ev2.GetAttempt())
	}
}

func TestRelayhost(t *testing.T) {
	relay := listen(t)
	h := start(t, tenantsYAML(), Options{Relayhost: relay.Addr()})
	m := readyMail("m-solo", "")
	m.Tenant = "solo"
	h.publish(m, "m-solo:quota")
	ev := h.next(cmv1.Outcome_OUTCOME_DELIVERED)
	if !strings.Contains(ev.GetReason(), "relayhost") {
		t.Errorf("delivered reason = %q, want the relayhost named", ev.GetReason())
	}
	if msgs := relay.Messages(); len(msgs) != 1 || msgs[0].To[0] != "ann@example.org" {
		t.Errorf("relayhost captured %d messages, want 1 for ann@example.org", len(msgs))
	}
}

func TestUnrenderableMailFails(t *testing.T) {
	capture := listen(t)
	h := start(t, tenantsYAML(serverYAML("relay", capture.Addr(), "none", false)), Options{})
	m := readyMail("m-bad", "relay")
	m.ReplyTo = "x@example.com\r\nBcc: eve@example.net"
	h.publish(m, "m-bad:quota")
	ev := h.next(cmv1.Outcome_OUTCOME_FAILED)
	if !strings.Contains(ev.GetReason(), ErrInvalidMail.Error()) {
		t.Errorf("failed reason = %q, want %q", ev.GetReason(), ErrInvalidMail)
	}
	h.readyDrained()
	if len(capture.Messages()) != 0 {
		t.Error("an invalid mail was sent")
	}
}

func TestDeadLetters(t *testing.T) {
	capture := listen(t)
	h := start(t, tenantsYAML(serverYAML("relay", capture.Addr(), "none", false)), Options{})
	ctx := context.Background()
	if err := h.bus.PublishMsg(ctx, &nats.Msg{Subject: "mail.ready.acme", Data: []byte("\xff not protobuf")}, "junk"); err != nil {
		t.Fatal(err)
	}
	h.publish(readyMail("m-nosrv", "no-such-server"), "m-nosrv:quota")
	stranger := readyMail("m-who", "relay")
	stranger.Tenant = "nobody"
	h.publish(stranger, "m-who:quota")
	noEnv := readyMail("m-noenv", "relay")
	noEnv.Envelope = nil
	h.publish(noEnv, "m-noenv:quota")

	cons, err := h.bus.JetStream().OrderedConsumer(ctx, bus.StreamDLQ, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"dlq.sender.>"}})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for range 4 {
		msg, err := cons.Next(jetstream.FetchMaxWait(15 * time.Second))
		if err != nil {
			t.Fatalf("dead letters so far %q: %v", reasons, err)
		}
		reasons = append(reasons, msg.Headers().Get(bus.HeaderDLQReason))
	}
	all := strings.Join(reasons, "\n")
	for _, want := range []string{"undecodable", `unknown server "no-such-server"`, `unknown tenant "nobody"`, "no envelope"} {
		if !strings.Contains(all, want) {
			t.Errorf("dead-letter reasons lack %q:\n%s", want, all)
		}
	}
	h.readyDrained()
	if len(capture.Messages()) != 0 {
		t.Error("dead-lettered input was sent")
	}
}

// tlsServer is a go-smtp server with STARTTLS or implicit TLS and AUTH
// PLAIN, like a tenant's submission relay.
type tlsServer struct {
	addr string

	mu     sync.Mutex
	logins []string // user:password of successful logins
	tlsOK  []bool   // whether each message came over TLS
	reject error
}

func startTLSServer(t *testing.T, cert tls.Certificate, implicit bool) *tlsServer {
	t.Helper()
	ts := &tlsServer{}
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &tlsSession{srv: ts, conn: c}, nil
	}))
	s.Domain = "relay.test"
	s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.ReadTimeout, s.WriteTimeout = time.Minute, time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	if implicit {
		ln = tls.NewListener(ln, s.TLSConfig)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ts
}

type tlsSession struct {
	srv  *tlsServer
	conn *smtp.Conn
	user string
}

func (s *tlsSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *tlsSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != "acme" || pass != testPassword {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		s.srv.mu.Lock()
		s.srv.logins = append(s.srv.logins, user+":"+pass)
		s.srv.mu.Unlock()
		s.user = user
		return nil
	}), nil
}

func (s *tlsSession) Mail(string, *smtp.MailOptions) error {
	if s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	}
	return nil
}

func (s *tlsSession) Rcpt(string, *smtp.RcptOptions) error {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	return s.srv.reject
}

func (s *tlsSession) Data(r io.Reader) error {
	if _, err := io.ReadAll(r); err != nil {
		return err
	}
	_, isTLS := s.conn.TLSConnectionState()
	s.srv.mu.Lock()
	s.srv.tlsOK = append(s.srv.tlsOK, isTLS)
	s.srv.mu.Unlock()
	return nil
}

func (s *tlsSession) Reset()        {}
func (s *tlsSession) Logout() error { return nil }

func (ts *tlsServer) state() (logins []string, tlsOK []bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]string(nil), ts.logins...), append([]bool(nil), ts.tlsOK...)
}

// selfSigned returns a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "relay.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func TestTLSAndAuth(t *testing.T) {
	for _, reuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("reuse=%v", reuse), func(t *testing.T) { testTLSAndAuth(t, reuse) })
	}
}

func testTLSAndAuth(t *testing.T, reuse bool) {
	cert, pool := selfSigned(t)
	starttls := startTLSServer(t, cert, false)
	implicit := startTLSServer(t, cert, true)
	h := start(t, tenantsYAML(
		serverYAML("submission", starttls.addr, "starttls", true),
		serverYAML("smtps", implicit.addr, "implicit", true),
	), Options{DisableConnectionReuse: !reuse}, func(s *Service) { s.rootCAs = pool })

	for _, srv := range []struct {
		name string
		ts   *tlsServer
	}{{"submission", starttls}, {"smtps", implicit}} {
		for i := 1; i <= 2; i++ {
			id := fmt.Sprintf("m-%s-%d", srv.name, i)
			h.publish(readyMail(id, srv.name), id+":quota")
			if ev := h.next(cmv1.Outcome_OUTCOME_DELIVERED); ev.GetMailId() != id {
				t.Errorf("delivered %s, want %s", ev.GetMailId(), id)
			}
		}
		// Two mails: one login per connection, so one when it is reused.
		wantLogins := 2
		if reuse {
			wantLogins = 1
		}
		logins, tlsOK := srv.ts.state()
		if len(logins) != wantLogins || logins[0] != "acme:"+testPassword || len(tlsOK) != 2 || !tlsOK[0] || !tlsOK[1] {
			t.Errorf("server %s saw logins %q and messages over TLS %v; want %d logins and two messages over TLS", srv.name, logins, tlsOK, wantLogins)
		}
	}

	// A refusal after login: the transcript shows the TLS session, with the
	// AUTH line redacted; on a reused connection, a summary of it.
	starttls.mu.Lock()
	starttls.reject = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relay denied"}
	starttls.mu.Unlock()
	h.publish(readyMail("m-denied", "submission"), "m-denied:quota")
	ev := h.next(cmv1.Outcome_OUTCOME_BOUNCED)
	tr := ev.GetTranscript()
	want := []string{"C: EHLO sender.test", "C: STARTTLS", "S: 220", "* TLS established", "certificate verified", "C: AUTH PLAIN <redacted>", "S: 235", "S: 550 5.7.1 relay denied"}
	if reuse {
		want = []string{"* reusing the connection to " + starttls.addr, "STARTTLS, TLS established", "certificate verified", "AUTH PLAIN accepted", "C: RSET", "S: 250", "S: 550 5.7.1 relay denied"}
	}
	for _, w := range want {
		if !strings.Contains(tr, w) {
			t.Errorf("transcript lacks %q:\n%s", w, tr)
		}
	}
	if n := strings.Count(tr, "C: EHLO sender.test"); !reuse && n != 2 {
		t.Errorf("transcript has %d EHLO, want 2 (before and after STARTTLS):\n%s", n, tr)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("\x00acme\x00" + testPassword))
	for _, secret := range []string{testPassword, plain} {
		if strings.Contains(tr, secret) || strings.Contains(h.logs.String(), secret) {
			t.Errorf("transcript or log contains the credentials %q", secret)
		}
	}
}

func TestTLSCertificates(t *testing.T) {
	cert, _ := selfSigned(t)
	ts := startTLSServer(t, cert, false)
	// No pool trusts the certificate: starttls (verified) must not send;
	// opportunistic without credentials encrypts without verifying.
	h := start(t, tenantsYAML(
		serverYAML("verified", ts.addr, "starttls", true),
		serverYAML("opportunistic", ts.addr, "opportunistic", false),
	), Options{})

	h.publish(readyMail("m-verified", "verified"), "m-verified:quota")
	ev := h.next(cmv1.Outcome_OUTCOME_DEFERRED)
	if !strings.Contains(ev.GetReason(), "TLS handshake") || !strings.Contains(ev.GetReason(), "certificate") {
		t.Errorf("deferred reason = %q, want a certificate error", ev.GetReason())
	}
	if logins, _ := ts.state(); len(logins) != 0 {
		t.Errorf("credentials went to an unverified server: %q", logins)
	}

	h.publish(readyMail("m-opp", "opportunistic"), "m-opp:quota")
	// The first mail's retries interleave; m-opp's outcome is what counts.
	// The test server requires a login before MAIL: without credentials
	// the mail is refused, but over TLS.
	ev = h.nextOf("m-opp")
	if ev.GetOutcome() != cmv1.Outcome_OUTCOME_BOUNCED || !strings.Contains(ev.GetTranscript(), "certificate not verified (opportunistic)") {
		t.Errorf("m-opp event %s with transcript\n%s\nwant bounced (530) after an unverified TLS session", ev.GetOutcome(), ev.GetTranscript())
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	ns := testenv.NATS(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Connect(ns.ClientURL(), "sender-test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cfg, err := config.Parse([]byte(tenantsYAML()), "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		o    Options
	}{
		{"no bus", Options{Config: cfg, Log: log}},
		{"relayhost without port", Options{Bus: b, Config: cfg, Log: log, Relayhost: "relay.example.com"}},
		{"relayhost without host", Options{Bus: b, Config: cfg, Log: log, Relayhost: ":25"}},
		{"relayhost port not a number", Options{Bus: b, Config: cfg, Log: log, Relayhost: "relay:smtp"}},
		{"HELO name with a space", Options{Bus: b, Config: cfg, Log: log, HeloName: "a b"}},
	}
	for _, tt := range tests {
		if _, err := New(tt.o); err == nil {
			t.Errorf("New(%s) = nil error, want an error", tt.name)
		}
	}
	s, err := New(Options{Bus: b, Config: cfg, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if s.o.Workers != 8 || s.o.RetryBase != 5*time.Minute || s.o.RetryMax != 4*time.Hour ||
		s.o.MaxLifetime != 5*24*time.Hour || s.o.DialTimeout != 30*time.Second || s.o.CommandTimeout != 5*time.Minute || s.o.HeloName == "" {
		t.Errorf("New defaults = %+v", s.o)
	}
	st, err := s.kv.Status(context.Background())
	if err != nil || st.TTL() != 7*24*time.Hour || st.Bucket() != "delivered" {
		t.Errorf("KV bucket = %v (%v), want delivered with a 7-day TTL", st, err)
	}
}
