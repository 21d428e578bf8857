package sender

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Errors of a delivery attempt that no server answered.
var (
	// ErrClearTextAuth: the server has credentials but the connection is
	// not encrypted; the sender never sends AUTH in clear text.
	ErrClearTextAuth = errors.New("sender: refusing to send credentials over an unencrypted connection")
	// ErrNoRelayhost: the mail names no server (its tenant has none) and
	// no relayhost is configured.
	ErrNoRelayhost = errors.New("sender: the mail names no server and no relayhost is configured")
	// ErrUnknownServer: the mail names a server its tenant does not have.
	ErrUnknownServer = errors.New("sender: unknown server")
)

// target is the server one mail is handed to.
type target struct {
	// name is the server's name in the tenants file, or "relayhost".
	name     string
	host     string
	port     int
	tls      string // one of config.TLSNone, TLSStartTLS, TLSOpportunistic, TLSImplicit
	username string
	password config.Secret
}

func (t target) addr() string { return net.JoinHostPort(t.host, strconv.Itoa(t.port)) }

// class is what an attempt's result means for the mail (mail-rules §9).
type class int

const (
	// delivered: the server accepted the message (2xx after DATA).
	delivered class = iota
	// temporary: 4xx, or a network, TLS or timeout error: retry later.
	temporary
	// permanent: 5xx: the mail bounces at once.
	permanent
	// refused: the sender itself will not send it (configuration or
	// input that no retry can fix): the mail fails.
	refused
)

func (c class) String() string {
	return [...]string{"delivered", "temporary", "permanent", "refused"}[c]
}

// attempt is the result of one delivery attempt.
type attempt struct {
	class class
	// reply is the server's last reply: the 2xx that accepted the mail, or
	// the error reply. Its Code is 0 when no reply explains the failure
	// (network, TLS, timeout, local refusal).
	reply *cmv1.SMTPReply
	// err says why the mail was not delivered; nil when it was.
	err error
	// transcript is the SMTP conversation.
	transcript string
}

// refusal marks an error as a local refusal (class refused).
type refusal struct{ err error }

func (e *refusal) Error() string { return e.err.Error() }
func (e *refusal) Unwrap() error { return e.err }

// authFailure marks an error of the AUTH exchange. A rejected login is a
// problem of the tenant's configuration, not of the mail: like Postfix
// (smtp_sasl_auth_soft_bounce = yes) the mail is deferred, not bounced,
// whatever the reply code.
type authFailure struct{ err error }

func (e *authFailure) Error() string { return e.err.Error() }
func (e *authFailure) Unwrap() error { return e.err }

// stepError names the SMTP step that failed and the host that answered.
type stepError struct {
	step string
	host string
	err  error
}

func (e *stepError) Error() string {
	var se *smtp.SMTPError
	if errors.As(e.err, &se) {
		s := fmt.Sprintf("%s: %s answered %d", e.step, e.host, se.Code)
		if ec := enhancedCode(se.EnhancedCode); ec != "" {
			s += " " + ec
		}
		return s + " " + se.Message
	}
	return e.step + ": " + e.err.Error()
}

func (e *stepError) Unwrap() error { return e.err }

// classify maps an attempt's error to its class, in one place. Reply codes
// follow RFC 5321 §4.2.1: 4yz is a transient failure, 5yz a permanent one;
// an error without a reply (network, TLS, timeout) is transient.
func classify(err error) class {
	var (
		ref  *refusal
		auth *authFailure
		se   *smtp.SMTPError
	)
	switch {
	case err == nil:
		return delivered
	case errors.As(err, &ref):
		return refused
	case errors.As(err, &auth):
		return temporary
	case errors.As(err, &se) && se.Code >= 500 && se.Code < 600:
		return permanent
	default:
		return temporary
	}
}

// replyOf returns the server reply carried by err, or a reply with code 0
// naming host when err carries none.
func replyOf(err error, host string) *cmv1.SMTPReply {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &cmv1.SMTPReply{Code: int32(se.Code), EnhancedCode: enhancedCode(se.EnhancedCode), Text: se.Message, Host: host}
	}
	return &cmv1.SMTPReply{Host: host}
}

// enhancedCode formats an RFC 3463 code; "" when the reply had none.
func enhancedCode(c smtp.EnhancedCode) string {
	if c[0] <= 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

// parseReplyText splits the text of a reply into its RFC 3463 enhanced
// code, when it starts with one (RFC 2034 §4), and the rest.
func parseReplyText(text string) (enhanced, rest string) {
	first, after, _ := strings.Cut(text, " ")
	parts := strings.Split(first, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return "", text
	}
	for _, p := range parts[1:] {
		if _, err := strconv.Atoi(p); err != nil || p == "" || len(p) > 3 {
			return "", text
		}
	}
	return first, after
}

// deliver makes one delivery attempt of msg to tg.
func (s *Service) deliver(ctx context.Context, tg target, env *cmv1.Envelope, msg []byte) attempt {
	tr := &transcript{}
	reply, err := s.converse(ctx, tg, env, msg, tr)
	a := attempt{class: classify(err), reply: reply, err: err, transcript: tr.String()}
	if err != nil && a.reply == nil {
		a.reply = replyOf(err, tg.host)
	}
	return a
}

// converse runs one SMTP session (RFC 5321 §3.3): greeting, EHLO, STARTTLS
// per the server's TLS mode (RFC 3207), AUTH PLAIN over TLS only (RFC 4954
// §4, RFC 4616), MAIL, RCPT, DATA, QUIT. It returns the reply that
// accepted the message.
func (s *Service) converse(ctx context.Context, tg target, env *cmv1.Envelope, msg []byte, tr *transcript) (*cmv1.SMTPReply, error) {
	if tg.username != "" && tg.tls == config.TLSNone {
		return nil, &refusal{fmt.Errorf("%w: server %q has credentials but tls: none", ErrClearTextAuth, tg.name)}
	}
	addr := tg.addr()
	d := net.Dialer{Timeout: s.o.DialTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sender: connect to %s (%s): %w", addr, tg.name, err)
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	where := addr
	if remote := raw.RemoteAddr().String(); remote != addr {
		where += " [" + remote + "]"
	}
	tr.note("connected to %s for server %q (tls %s)", where, tg.name, tg.tls)

	secure := false
	plain := tr.wrap(raw)
	conn := plain
	if tg.tls == config.TLSImplicit {
		tc, err := s.handshake(raw, tg, tr)
		if err != nil {
			return nil, err
		}
		conn, secure = tr.wrap(tc), true
	}
	c := s.newClient(conn)
	if err := c.Hello(s.o.HeloName); err != nil {
		return nil, &stepError{"greeting and EHLO", tg.host, err}
	}

	if tg.tls == config.TLSStartTLS || tg.tls == config.TLSOpportunistic {
		if ok, _ := c.Extension("STARTTLS"); ok {
			tc, err := s.startTLS(plain, raw, tg, tr)
			if err != nil {
				return nil, err
			}
			// RFC 3207 §4.2: the session starts over; EHLO again.
			c = s.newClient(&greetedConn{Conn: tr.wrap(tc), greeting: []byte("220 " + tg.host + " TLS started\r\n")})
			if err := c.Hello(s.o.HeloName); err != nil {
				return nil, &stepError{"EHLO after STARTTLS", tg.host, err}
			}
			secure = true
		} else if tg.tls == config.TLSStartTLS {
			return nil, fmt.Errorf("sender: %s (%s) does not offer STARTTLS, which tls: starttls requires", addr, tg.name)
		} else {
			tr.note("STARTTLS not offered; continuing without TLS (tls: opportunistic)")
		}
	}

	if tg.username != "" {
		if !secure {
			// Opportunistic TLS whose STARTTLS was not offered (or was
			// stripped): a later attempt may get TLS; never send the
			// password meanwhile.
			return nil, fmt.Errorf("%w: %s (%s) did not offer STARTTLS", ErrClearTextAuth, addr, tg.name)
		}
		if !c.SupportsAuth(sasl.Plain) {
			return nil, &authFailure{fmt.Errorf("sender: %s (%s) does not offer AUTH PLAIN", addr, tg.name)}
		}
		if err := c.Auth(sasl.NewPlainClient("", tg.username, string(tg.password))); err != nil {
			return nil, &authFailure{&stepError{"AUTH PLAIN", tg.host, err}}
		}
	}

	opts := &smtp.MailOptions{Size: int64(len(msg))}
	if !isASCII(env.GetMailFrom()) || !isASCII(env.GetRcptTo()) {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return nil, &refusal{fmt.Errorf("sender: the envelope has a non-ASCII address and %s does not offer SMTPUTF8", addr)}
		}
		opts.UTF8 = true // RFC 6531 §3.4
	}
	if err := positive(c.Mail(env.GetMailFrom(), opts)); err != nil {
		return nil, &stepError{"MAIL FROM", tg.host, err}
	}
	if err := positive(c.Rcpt(env.GetRcptTo(), nil)); err != nil {
		return nil, &stepError{"RCPT TO", tg.host, err}
	}
	w, err := c.Data()
	if err != nil {
		return nil, &stepError{"DATA", tg.host, err}
	}
	if _, err := w.Write(msg); err != nil {
		return nil, &stepError{"message transfer", tg.host, err}
	}
	var reply *cmv1.SMTPReply
	resp, err := w.CloseWithResponse()
	var se *smtp.SMTPError
	switch {
	case err == nil:
		enh, text := parseReplyText(resp.StatusText)
		reply = &cmv1.SMTPReply{Code: 250, EnhancedCode: enh, Text: text, Host: tg.host}
	case errors.As(err, &se) && se.Code/100 == 2:
		// Accepted with a code other than 250: still accepted.
		reply = replyOf(err, tg.host)
	default:
		return nil, &stepError{"end of data", tg.host, err}
	}
	if err := c.Quit(); err != nil {
		tr.note("QUIT failed after the message was accepted: %v", err)
	}
	return reply, nil
}

// positive treats a 2xx reply that go-smtp did not expect (a 251 where
// it waits for 250) as the success it is (RFC 5321 §4.2.1).
func positive(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code/100 == 2 {
		return nil
	}
	return err
}

// newClient returns a go-smtp client on conn with the configured timeouts.
// (smtp.SendMail and smtp.Dial are not used: they bring their own dialer
// and timeouts and insist on STARTTLS.)
func (s *Service) newClient(conn net.Conn) *smtp.Client {
	c := smtp.NewClient(conn)
	c.CommandTimeout = s.o.CommandTimeout
	c.SubmissionTimeout = s.o.CommandTimeout
	return c
}

// startTLS sends STARTTLS (RFC 3207 §4) on the recorded plain connection
// and, on a 220, runs the TLS handshake on the raw one. go-smtp only
// offers STARTTLS before its own EHLO, which would greet with "localhost"
// instead of HeloName, so the command is sent here, after the client's
// EHLO, and a second client continues on the TLS connection.
func (s *Service) startTLS(plain, raw net.Conn, tg target, tr *transcript) (*tls.Conn, error) {
	_ = plain.SetDeadline(time.Now().Add(s.o.CommandTimeout))
	if _, err := io.WriteString(plain, "STARTTLS\r\n"); err != nil {
		return nil, &stepError{"STARTTLS", tg.host, err}
	}
	// The server sends nothing after its 220 until the ClientHello, so this
	// reader cannot consume handshake bytes.
	_, _, err := textproto.NewReader(bufio.NewReaderSize(plain, 1024)).ReadResponse(220)
	_ = plain.SetDeadline(time.Time{})
	if err != nil {
		var pe *textproto.Error
		if errors.As(err, &pe) {
			enh, text := parseReplyText(pe.Msg)
			se := &smtp.SMTPError{Code: pe.Code, Message: text}
			fmt.Sscanf(enh, "%d.%d.%d", &se.EnhancedCode[0], &se.EnhancedCode[1], &se.EnhancedCode[2])
			err = se
		}
		return nil, &stepError{"STARTTLS", tg.host, err}
	}
	return s.handshake(raw, tg, tr)
}

// handshake runs a TLS client handshake on raw within DialTimeout.
func (s *Service) handshake(raw net.Conn, tg target, tr *transcript) (*tls.Conn, error) {
	cfg := &tls.Config{ServerName: tg.host, MinVersion: tls.VersionTLS12, RootCAs: s.rootCAs}
	if tg.tls == config.TLSOpportunistic && tg.username == "" {
		// Opportunistic security (RFC 7435 §1.3, Postfix "may"):
		// encryption without authentication beats clear text, so the
		// certificate is not verified. With credentials it is, so that a
		// password never goes to an impostor.
		cfg.InsecureSkipVerify = true
	}
	tc := tls.Client(raw, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), s.o.DialTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("sender: TLS handshake with %s (%s): %w", tg.addr(), tg.name, err)
	}
	st := tc.ConnectionState()
	verified := "certificate verified"
	if cfg.InsecureSkipVerify {
		verified = "certificate not verified (opportunistic)"
	}
	tr.note("TLS established: %s, %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), verified)
	return tc, nil
}

// greetedConn replays a server greeting before the connection's own data,
// so that a new go-smtp client can start on a connection whose greeting
// was already read (the session restarted by STARTTLS).
type greetedConn struct {
	net.Conn
	greeting []byte
}

func (c *greetedConn) Read(p []byte) (int, error) {
	if len(c.greeting) > 0 {
		n := copy(p, c.greeting)
		c.greeting = c.greeting[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
