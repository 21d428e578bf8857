package sender

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// scriptServer is an in-process go-smtp server whose answers a test
// scripts: per MAIL, RCPT and end of DATA, optionally requiring STARTTLS
// or AUTH (PLAIN and LOGIN), and able to drop a connection mid-DATA. It
// counts sessions, the most open at once, and the messages it accepted.
type scriptServer struct {
	addr string
	srv  *smtp.Server

	// requireTLS answers MAIL without STARTTLS with 530 5.7.0.
	requireTLS bool
	// requireAuth answers MAIL without AUTH with 530 5.7.0.
	requireAuth bool
	// mechs are the AUTH mechanisms offered; default PLAIN.
	mechs []string
	// cert is the server's certificate; default a new self-signed one.
	cert *tls.Certificate

	mu sync.Mutex
	// rcpt answers each RCPT; nil accepts.
	rcpt func(to string) error
	// data answers each end of DATA (n counts messages from 1); nil
	// accepts. dropData drops the connection in the middle of DATA.
	data     func(n int) error
	dropData func(n int) bool
	// mail answers each MAIL (n counts MAIL commands from 1); nil accepts.
	mail func(n int) error

	mails     int
	datas     int
	accepted  []string // recipients of accepted messages
	sessions  int
	open      int
	maxOpen   int
	conns     []*smtp.Conn
	logins    int
	logouts   int
	tlsMails  int
	authMechs []string
}

func startScript(t *testing.T, configure func(*scriptServer)) *scriptServer {
	t.Helper()
	ss := &scriptServer{mechs: []string{sasl.Plain}}
	if configure != nil {
		configure(ss)
	}
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		ss.mu.Lock()
		ss.sessions++
		ss.open++
		ss.maxOpen = max(ss.maxOpen, ss.open)
		ss.conns = append(ss.conns, c)
		ss.mu.Unlock()
		return &scriptSession{srv: ss, conn: c}, nil
	}))
	s.Domain = "mx.test"
	s.ReadTimeout, s.WriteTimeout = time.Minute, time.Minute
	s.EnableSMTPUTF8 = true
	if ss.requireTLS {
		if ss.cert == nil {
			cert, _ := selfSigned(t)
			ss.cert = &cert
		}
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*ss.cert}}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ss.addr, ss.srv = ln.Addr().String(), s
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ss
}

// dropAll closes every connection from the server side, as a server that
// times idle clients out does.
func (ss *scriptServer) dropAll() {
	ss.mu.Lock()
	conns := ss.conns
	ss.conns = nil
	ss.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (ss *scriptServer) stats() (sessions, maxOpen, logouts int, accepted []string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.sessions, ss.maxOpen, ss.logouts, append([]string(nil), ss.accepted...)
}

type scriptSession struct {
	srv    *scriptServer
	conn   *smtp.Conn
	authed bool
	to     []string
}

func (s *scriptSession) AuthMechanisms() []string { return s.srv.mechs }

func (s *scriptSession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user != "acme" || pass != testPassword {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		s.authed = true
		s.srv.mu.Lock()
		s.srv.logins++
		s.srv.authMechs = append(s.srv.authMechs, mech)
		s.srv.mu.Unlock()
		return nil
	}
	if mech == sasl.Login {
		return &loginServer{check: check}, nil
	}
	return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
}

// loginServer is the server side of AUTH LOGIN (go-sasl has only the
// client): "Username:", then "Password:", base64 handled by go-smtp.
type loginServer struct {
	check func(user, pass string) error
	step  int
	user  string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	l.step++
	switch l.step {
	case 1:
		if resp != nil {
			l.user = string(resp)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 2:
		l.user = string(resp)
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

func (s *scriptSession) Mail(string, *smtp.MailOptions) error {
	if _, isTLS := s.conn.TLSConnectionState(); s.srv.requireTLS && !isTLS {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	}
	if s.srv.requireAuth && !s.authed {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	s.srv.mu.Lock()
	s.srv.mails++
	n, f := s.srv.mails, s.srv.mail
	s.srv.mu.Unlock()
	if f != nil {
		return f(n)
	}
	return nil
}

func (s *scriptSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.srv.mu.Lock()
	f := s.srv.rcpt
	s.srv.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *scriptSession) Data(r io.Reader) error {
	s.srv.mu.Lock()
	s.srv.datas++
	n, f, drop := s.srv.datas, s.srv.data, s.srv.dropData
	s.srv.mu.Unlock()
	if drop != nil && drop(n) {
		_, _ = io.ReadFull(r, make([]byte, 100))
		s.conn.Close()
		return errors.New("dropped")
	}
	if _, err := io.ReadAll(r); err != nil {
		return err
	}
	if f != nil {
		if err := f(n); err != nil {
			return err
		}
	}
	_, isTLS := s.conn.TLSConnectionState()
	s.srv.mu.Lock()
	s.srv.accepted = append(s.srv.accepted, s.to...)
	if isTLS {
		s.srv.tlsMails++
	}
	s.srv.mu.Unlock()
	return nil
}

func (s *scriptSession) Reset() { s.to = nil }

func (s *scriptSession) Logout() error {
	s.srv.mu.Lock()
	s.srv.open--
	s.srv.logouts++
	s.srv.mu.Unlock()
	return nil
}

func smtpErr(code int, e1, e2, e3 int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{e1, e2, e3}, Message: msg}
}

// TestOutcomes runs one mail against servers answering each way of
// mail-rules §9 and checks the outcome, the event's reply and transcript.
func TestOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		configure func(*scriptServer)
		want      cmv1.Outcome
		code      int32
		enhanced  string
		inTr      string // in the event's transcript ("" when delivered)
	}{
		{"250 accepted", nil, cmv1.Outcome_OUTCOME_DELIVERED, 250, "2.0.0", ""},
		{"421 at MAIL", func(s *scriptServer) {
			s.mail = func(int) error { return smtpErr(421, 4, 3, 2, "try again later, closing") }
		}, cmv1.Outcome_OUTCOME_DEFERRED, 421, "4.3.2", "S: 421 4.3.2 try again later"},
		{"451 at RCPT", func(s *scriptServer) {
			s.rcpt = func(string) error { return smtpErr(451, 4, 7, 1, "greylisted") }
		}, cmv1.Outcome_OUTCOME_DEFERRED, 451, "4.7.1", "S: 451 4.7.1 greylisted"},
		{"550 at RCPT", func(s *scriptServer) {
			s.rcpt = func(string) error { return smtpErr(550, 5, 1, 1, "no such user") }
		}, cmv1.Outcome_OUTCOME_BOUNCED, 550, "5.1.1", "S: 550 5.1.1 no such user"},
		{"554 after DATA", func(s *scriptServer) {
			s.data = func(int) error { return smtpErr(554, 5, 7, 1, "spam") }
		}, cmv1.Outcome_OUTCOME_BOUNCED, 554, "5.7.1", "S: 554 5.7.1 spam"},
		{"connection dropped mid-DATA", func(s *scriptServer) {
			s.dropData = func(int) bool { return true }
		}, cmv1.Outcome_OUTCOME_DEFERRED, 0, "", "C: [message:"},
		{"STARTTLS required, not used", func(s *scriptServer) { s.requireTLS = true },
			cmv1.Outcome_OUTCOME_BOUNCED, 530, "5.7.0", "S: 530 5.7.0 Must issue a STARTTLS command first"},
		{"AUTH required, no credentials", func(s *scriptServer) { s.requireAuth = true },
			cmv1.Outcome_OUTCOME_BOUNCED, 530, "5.7.0", "S: 530 5.7.0 Authentication required"},
	}
	capture := listen(t) // unused server so the tenants file has a valid entry
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := startScript(t, tt.configure)
			h := start(t, tenantsYAML(serverYAML("relay", ss.addr, "none", false), serverYAML("spare", capture.Addr(), "none", false)), Options{RetryBase: time.Hour})
			h.publish(readyMail("m1", "relay"), "m1:quota")
			ev := h.next(tt.want)
			if r := ev.GetSmtp(); r.GetCode() != tt.code || r.GetEnhancedCode() != tt.enhanced || r.GetHost() != "127.0.0.1" {
				t.Errorf("reply = %v, want %d %s from 127.0.0.1", r, tt.code, tt.enhanced)
			}
			if ev.GetAttempt() != 1 {
				t.Errorf("attempt = %d, want 1", ev.GetAttempt())
			}
			if tt.inTr == "" && ev.GetTranscript() != "" {
				t.Errorf("delivered event carries a transcript:\n%s", ev.GetTranscript())
			}
			if tt.inTr != "" && !strings.Contains(ev.GetTranscript(), tt.inTr) {
				t.Errorf("transcript lacks %q:\n%s", tt.inTr, ev.GetTranscript())
			}
			if tt.want == cmv1.Outcome_OUTCOME_DEFERRED && ev.GetNextAttemptAt() == nil {
				t.Error("deferred event without next_attempt_at")
			}
			if tt.want != cmv1.Outcome_OUTCOME_DEFERRED {
				h.readyDrained()
			}
		})
	}
}

// TestAuthMechanisms: a server requiring STARTTLS and AUTH gets PLAIN or,
// when it offers only that, LOGIN, once per connection; a wrong password
// defers (the tenant's configuration is at fault, not the mail).
func TestAuthMechanisms(t *testing.T) {
	cert, pool := selfSigned(t)
	plain := startScript(t, func(s *scriptServer) { s.cert, s.requireTLS, s.requireAuth = &cert, true, true })
	login := startScript(t, func(s *scriptServer) {
		s.cert, s.requireTLS, s.requireAuth, s.mechs = &cert, true, true, []string{sasl.Login}
	})
	h := start(t, tenantsYAML(
		serverYAML("plain", plain.addr, "starttls", true),
		serverYAML("login", login.addr, "starttls", true),
	), Options{Workers: 1}, func(s *Service) { s.rootCAs = pool })
	for _, srv := range []struct {
		name string
		ss   *scriptServer
		mech string
	}{{"plain", plain, sasl.Plain}, {"login", login, sasl.Login}} {
		for i := range 2 {
			id := fmt.Sprintf("m-%s-%d", srv.name, i)
			h.publish(readyMail(id, srv.name), id+":quota")
			h.next(cmv1.Outcome_OUTCOME_DELIVERED)
		}
		srv.ss.mu.Lock()
		logins, mechs, tlsMails := srv.ss.logins, srv.ss.authMechs, srv.ss.tlsMails
		srv.ss.mu.Unlock()
		if logins != 1 || mechs[0] != srv.mech || tlsMails != 2 {
			t.Errorf("%s: %d logins with %v, %d mails over TLS; want 1 login with %s and 2 mails over TLS", srv.name, logins, mechs, tlsMails, srv.mech)
		}
	}

	wrong := startScript(t, func(s *scriptServer) { s.cert, s.requireTLS, s.requireAuth = &cert, true, true })
	h2 := start(t, strings.ReplaceAll(tenantsYAML(serverYAML("wrong", wrong.addr, "starttls", true)), "PASSWORD_FILE", "/dev/null"),
		Options{RetryBase: time.Hour}, func(s *Service) { s.rootCAs = pool })
	h2.publish(readyMail("m-wrong", "wrong"), "m-wrong:quota")
	ev := h2.next(cmv1.Outcome_OUTCOME_DEFERRED)
	if ev.GetSmtp().GetCode() != 535 || !strings.Contains(ev.GetTranscript(), "C: AUTH PLAIN <redacted>") {
		t.Errorf("deferred = %v, want the 535 and the redacted AUTH in the transcript", ev)
	}
}

// TestRecipientsGetTheirOwnOutcome: two recipients' copies go over one
// pooled connection; the server refuses one. Each gets its own event.
func TestRecipientsGetTheirOwnOutcome(t *testing.T) {
	ss := startScript(t, func(s *scriptServer) {
		s.rcpt = func(to string) error {
			if to == "bob@example.org" {
				return smtpErr(550, 5, 1, 1, "no such user")
			}
			return nil
		}
	})
	h := start(t, tenantsYAML(serverYAML("relay", ss.addr, "none", false)), Options{Workers: 1})
	ann, bob := readyMail("m-ann", "relay"), readyMail("m-bob", "relay")
	bob.Recipient, bob.Envelope.RcptTo = &cmv1.Partner{Name: "Bob", Email: "bob@example.org"}, "bob@example.org"
	h.publish(bob, "m-bob:quota")
	h.publish(ann, "m-ann:quota")
	got := map[string]*cmv1.MailEvent{}
	for range 2 {
		ev := <-h.events
		got[ev.GetMailId()] = ev
	}
	if ev := got["m-bob"]; ev.GetOutcome() != cmv1.Outcome_OUTCOME_BOUNCED || ev.GetRecipient() != "bob@example.org" || ev.GetSmtp().GetCode() != 550 {
		t.Errorf("m-bob: %v, want bounced for bob@example.org with 550", ev)
	}
	if ev := got["m-ann"]; ev.GetOutcome() != cmv1.Outcome_OUTCOME_DELIVERED || ev.GetRecipient() != "ann@example.org" {
		t.Errorf("m-ann: %v, want delivered to ann@example.org", ev)
	}
	h.readyDrained()
	sessions, _, _, accepted := ss.stats()
	if sessions != 1 || len(accepted) != 1 || accepted[0] != "ann@example.org" {
		t.Errorf("server saw %d sessions and accepted %v; want 1 session (reused after the refusal) and [ann@example.org]", sessions, accepted)
	}
	if tr := got["m-ann"].GetTranscript(); tr != "" {
		t.Errorf("delivered event has a transcript: %s", tr)
	}
}

// TestBrokenPooledConnection: a pooled connection the server dropped, or
// that answers 421 at MAIL, is replaced by a fresh one within the same
// attempt: the mail is delivered at attempt 1.
func TestBrokenPooledConnection(t *testing.T) {
	var fail421 atomic.Bool
	ss := startScript(t, func(s *scriptServer) {
		s.mail = func(int) error {
			if fail421.CompareAndSwap(true, false) {
				return smtpErr(421, 4, 4, 2, "idle too long, closing")
			}
			return nil
		}
	})
	h := start(t, tenantsYAML(serverYAML("relay", ss.addr, "none", false)), Options{Workers: 1})
	h.publish(readyMail("m-1", "relay"), "m-1:quota")
	h.next(cmv1.Outcome_OUTCOME_DELIVERED)
	testenv.Eventually(t, 5*time.Second, func() error {
		if h.svc.pool.idleCount() != 1 {
			return errors.New("the session is not back in the pool")
		}
		return nil
	})

	ss.dropAll() // the server drops the idle session: RSET fails
	h.publish(readyMail("m-2", "relay"), "m-2:quota")
	if ev := h.next(cmv1.Outcome_OUTCOME_DELIVERED); ev.GetAttempt() != 1 {
		t.Errorf("m-2 delivered at attempt %d, want 1", ev.GetAttempt())
	}

	fail421.Store(true) // RSET passes, MAIL gets 421: retried fresh
	h.publish(readyMail("m-3", "relay"), "m-3:quota")
	if ev := h.next(cmv1.Outcome_OUTCOME_DELIVERED); ev.GetAttempt() != 1 {
		t.Errorf("m-3 delivered at attempt %d, want 1", ev.GetAttempt())
	}
	sessions, _, _, accepted := ss.stats()
	if sessions != 3 || len(accepted) != 3 {
		t.Errorf("server saw %d sessions and %d messages; want 3 and 3 (one fresh session per broken one)", sessions, len(accepted))
	}
}

// TestPoolConcurrencyCapAndIdleTimeout: with 8 workers and a cap of 2,
// the server never sees more than 2 sessions at once; idle sessions are
// closed with QUIT after IdleTimeout.
func TestPoolConcurrencyCapAndIdleTimeout(t *testing.T) {
	ss := startScript(t, func(s *scriptServer) {
		s.data = func(int) error { time.Sleep(20 * time.Millisecond); return nil }
	})
	h := start(t, tenantsYAML(serverYAML("relay", ss.addr, "none", false)), Options{
		Workers: 8, DestinationConcurrency: 2, IdleTimeout: 300 * time.Millisecond,
	})
	for i := range 12 {
		id := fmt.Sprintf("m-%d", i)
		h.publish(readyMail(id, "relay"), id+":quota")
	}
	for range 12 {
		h.next(cmv1.Outcome_OUTCOME_DELIVERED)
	}
	h.readyDrained()
	sessions, maxOpen, _, accepted := ss.stats()
	if maxOpen > 2 || sessions > 2 || len(accepted) != 12 {
		t.Errorf("server saw %d sessions, %d at once, %d messages; want at most 2, at most 2, 12", sessions, maxOpen, len(accepted))
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if _, _, logouts, _ := ss.stats(); logouts != sessions {
			return fmt.Errorf("%d of %d sessions closed", logouts, sessions)
		}
		if n := h.svc.pool.idleCount(); n != 0 {
			return fmt.Errorf("%d idle sessions", n)
		}
		return nil
	})
}

// TestRetrySchedule: with an injected clock, each deferral's next attempt
// is RetryBase doubled per attempt (±10 % jitter) up to RetryMax, and
// once the clock passes MaxLifetime the mail fails.
func TestRetrySchedule(t *testing.T) {
	ss := startScript(t, func(s *scriptServer) {
		s.rcpt = func(string) error { return smtpErr(451, 4, 7, 1, "greylisted") }
	})
	var clock atomic.Int64
	clock.Store(time.Now().Truncate(time.Second).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	h := start(t, tenantsYAML(serverYAML("relay", ss.addr, "none", false)), Options{
		Now: now, RetryBase: 20 * time.Millisecond, RetryMax: 80 * time.Millisecond, MaxLifetime: 48 * time.Hour,
	})
	h.publish(readyMail("m-grey", "relay"), "m-grey:quota")
	want := []time.Duration{20, 40, 80, 80, 80}
	for i, w := range want {
		ev := h.next(cmv1.Outcome_OUTCOME_DEFERRED)
		w *= time.Millisecond
		if ev.GetAttempt() != int32(i+1) {
			t.Errorf("deferral %d has attempt %d", i+1, ev.GetAttempt())
		}
		if !ev.GetAt().AsTime().Equal(now()) {
			t.Errorf("deferral %d at %s, want the injected clock %s", i+1, ev.GetAt().AsTime(), now())
		}
		if got := ev.GetNextAttemptAt().AsTime().Sub(ev.GetAt().AsTime()); got < w-w/10 || got > w+w/10 {
			t.Errorf("deferral %d: next attempt in %s, want %s ±10 %%", i+1, got, w)
		}
		if i == len(want)-1 {
			// The mail has waited two days by the injected clock.
			clock.Add(int64(49 * time.Hour))
		}
	}
	ev := h.next(cmv1.Outcome_OUTCOME_FAILED)
	if !strings.Contains(ev.GetReason(), "max lifetime 48h0m0s") || ev.GetSmtp().GetCode() != 451 || ev.GetAttempt() != 6 {
		t.Errorf("failed event = %v, want the lifetime reason, the last 451 and attempt 6", ev)
	}
	h.readyDrained()
}
