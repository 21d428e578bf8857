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
	// ErrUnknownServer: the mail names a server its tenant does not have.
	ErrUnknownServer = errors.New("sender: unknown server")
)

// target is the server one mail is handed to.
type target struct {
	// name is the server's name in the tenants file, "relayhost" or "mx".
	name string
	// tenant owns the server; empty for the relayhost and MX hosts, whose
	// connections any tenant's mail may share.
	tenant   string
	host     string
	port     int
	tls      string // one of config.TLSNone, TLSStartTLS, TLSOpportunistic, TLSImplicit
	username string
	password config.Secret
	// mx: deliver to the MX hosts of the recipient's domain; host and
	// port are then those of the MX host being tried.
	mx bool
}

func (t target) addr() string { return net.JoinHostPort(t.host, strconv.Itoa(t.port)) }

// poolKey names the connections a mail to t at addr may share: same
// address, same TLS mode and, for a tenant's server, the same tenant and
// server (its login), so that one tenant's authenticated session never
// carries another tenant's mail.
func (t target) poolKey(addr string) string {
	return t.tenant + "|" + t.name + "|" + t.host + "|" + addr + "|" + t.tls
}

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
	// dkim describes the signatures the message carried.
	dkim []string
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

// deliver makes one delivery attempt of msg to tg: to its server, or,
// for a tenant without servers and without a relayhost, to the MX hosts
// of the recipient's domain.
func (s *Service) deliver(ctx context.Context, tg target, env *cmv1.Envelope, msg []byte) attempt {
	tr := &transcript{}
	var (
		reply *cmv1.SMTPReply
		err   error
		host  = tg.host
	)
	if tg.mx {
		reply, host, err = s.deliverMX(ctx, env, msg, tr)
	} else {
		reply, _, err = s.deliverTo(ctx, tg, tg.addr(), env, msg, tr)
	}
	a := attempt{class: classify(err), reply: reply, err: err, transcript: tr.String()}
	if err != nil && a.reply == nil {
		a.reply = replyOf(err, host)
	}
	return a
}

// deliverTo delivers msg to tg at addr over a pooled connection or a new
// one, within the destination's concurrency cap. A pooled connection is
// probed with RSET (RFC 5321 §4.1.1.5) first; when it turns out broken,
// before or during the transaction, the mail is sent once more on a
// fresh connection, within the same attempt. opened reports whether a
// session got as far as MAIL FROM: when it did not, an MX delivery tries
// the next address.
func (s *Service) deliverTo(ctx context.Context, tg target, addr string, env *cmv1.Envelope, msg []byte, tr *transcript) (reply *cmv1.SMTPReply, opened bool, err error) {
	if tg.username != "" && tg.tls == config.TLSNone {
		return nil, false, &refusal{fmt.Errorf("%w: server %q has credentials but tls: none", ErrClearTextAuth, tg.name)}
	}
	key := tg.poolKey(addr)
	d, err := s.pool.acquire(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("sender: waiting for a connection slot to %s: %w", addr, err)
	}
	defer s.pool.release(d)

	sess, reused := s.pool.takeIdle(d), false
	if sess != nil {
		sess.use(tr)
		tr.note("reusing the connection to %s for server %q (tls %s; %s; %d mails sent on it, idle %s)", sess.where, tg.name, tg.tls,
			strings.Join(sess.setup, "; "), sess.mails, time.Since(sess.idleSince).Round(time.Millisecond))
		if err := sess.rset(min(s.o.CommandTimeout, rsetTimeout)); err != nil {
			tr.note("the pooled connection is broken (%v); opening a fresh one", err)
			sess.close()
			sess = nil
		} else {
			reused = true
		}
	}
	if sess == nil {
		if sess, err = s.open(ctx, tg, addr, tr); err != nil {
			return nil, false, err
		}
	}
	reply, err = sess.send(ctx, tg, env, msg)
	if err != nil && reused && broken(err) {
		// A connection the server dropped while it sat in the pool is not
		// the mail's fault: retry once on a fresh one, same attempt.
		tr.note("the pooled connection broke (%v); retrying once on a fresh connection", err)
		sess.close()
		if sess, err = s.open(ctx, tg, addr, tr); err != nil {
			return nil, false, err
		}
		reply, err = sess.send(ctx, tg, env, msg)
	}
	sess.mails++
	switch usable := err == nil || !broken(err); {
	case usable && !s.o.DisableConnectionReuse:
		s.pool.put(d, sess)
	default:
		sess.quit(s.pool.quitTimeout, usable)
	}
	return reply, true, err
}

// rsetTimeout bounds the RSET that probes a pooled connection, like
// Postfix's smtp_rset_timeout: a connection that does not answer it soon
// is replaced rather than waited for.
const rsetTimeout = 20 * time.Second

// broken reports whether err leaves the connection unusable: no reply
// (network error, timeout, a dropped connection) or a 421, with which the
// server announces it closes the channel (RFC 5321 §3.8).
func broken(err error) bool {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return true
	}
	return se.Code == 421
}

// session is an open SMTP connection after the greeting, EHLO, STARTTLS
// and AUTH: ready for MAIL FROM. It carries one mail at a time.
type session struct {
	c *smtp.Client
	// raw is the TCP connection; closing it ends the session.
	raw net.Conn
	// taps are the recorded layers (plain, then TLS): they follow the
	// transcript of the mail in progress.
	taps []*recordedConn
	// cmd is the layer the client talks on, for commands sent outside
	// go-smtp (RSET).
	cmd   net.Conn
	where string
	// setup sums up how the session was opened (TLS, login), for the
	// transcripts of the mails that reuse it.
	setup     []string
	idleSince time.Time
	mails     int
}

// use points the session's transcript at tr.
func (ss *session) use(tr *transcript) {
	for _, t := range ss.taps {
		t.use(tr)
	}
}

// open connects to addr and runs the session up to MAIL FROM (RFC 5321
// §3.3): greeting, EHLO, STARTTLS per the server's TLS mode (RFC 3207),
// AUTH PLAIN or LOGIN over TLS only (RFC 4954 §4, RFC 4616).
func (s *Service) open(ctx context.Context, tg target, addr string, tr *transcript) (*session, error) {
	dl := net.Dialer{Timeout: s.o.DialTimeout}
	raw, err := dl.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sender: connect to %s (%s): %w", addr, tg.name, err)
	}
	ok := false
	defer func() {
		if !ok {
			raw.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	where := addr
	if remote := raw.RemoteAddr().String(); remote != addr {
		where += " [" + remote + "]"
	}
	if tg.mx {
		where = tg.host + " [" + addr + "]"
	}
	tr.note("connected to %s for server %q (tls %s)", where, tg.name, tg.tls)

	ss := &session{raw: raw, where: where}
	secure := false
	plain := tr.wrap(raw)
	ss.taps = append(ss.taps, plain)
	conn := net.Conn(plain)
	if tg.tls == config.TLSImplicit {
		tc, err := s.handshake(raw, tg, tr)
		if err != nil {
			return nil, err
		}
		tap := tr.wrap(tc)
		ss.taps = append(ss.taps, tap)
		conn, secure = tap, true
		ss.setup = append(ss.setup, "implicit "+tlsSummary(tc, tg.tls == config.TLSOpportunistic && tg.username == ""))
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
			tap := tr.wrap(tc)
			ss.taps = append(ss.taps, tap)
			conn = tap
			c = s.newClient(&greetedConn{Conn: tap, greeting: []byte("220 " + tg.host + " TLS started\r\n")})
			if err := c.Hello(s.o.HeloName); err != nil {
				return nil, &stepError{"EHLO after STARTTLS", tg.host, err}
			}
			secure = true
			ss.setup = append(ss.setup, "STARTTLS, "+tlsSummary(tc, tg.tls == config.TLSOpportunistic && tg.username == ""))
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
		var (
			mech   string
			client sasl.Client
		)
		switch {
		case c.SupportsAuth(sasl.Plain):
			mech, client = sasl.Plain, sasl.NewPlainClient("", tg.username, string(tg.password))
		case c.SupportsAuth(sasl.Login):
			// LOGIN (draft-murchison-sasl-login) for servers that offer
			// nothing else, such as older Exchange relays.
			mech, client = sasl.Login, sasl.NewLoginClient(tg.username, string(tg.password))
		default:
			return nil, &authFailure{fmt.Errorf("sender: %s (%s) offers neither AUTH PLAIN nor AUTH LOGIN", addr, tg.name)}
		}
		if err := c.Auth(client); err != nil {
			return nil, &authFailure{&stepError{"AUTH " + mech, tg.host, err}}
		}
		ss.setup = append(ss.setup, "AUTH "+mech+" accepted")
	}
	if len(ss.setup) == 0 {
		ss.setup = append(ss.setup, "no TLS")
	}
	ss.c, ss.cmd = c, conn
	ok = true
	return ss, nil
}

// send runs one mail transaction (RFC 5321 §3.3): MAIL, RCPT, DATA. It
// returns the reply that accepted the message.
func (ss *session) send(ctx context.Context, tg target, env *cmv1.Envelope, msg []byte) (*cmv1.SMTPReply, error) {
	stop := context.AfterFunc(ctx, func() { ss.raw.Close() })
	defer stop()
	c := ss.c
	opts := &smtp.MailOptions{Size: int64(len(msg))}
	if !isASCII(env.GetMailFrom()) || !isASCII(env.GetRcptTo()) {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return nil, &refusal{fmt.Errorf("sender: the envelope has a non-ASCII address and %s does not offer SMTPUTF8", ss.where)}
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
	resp, err := w.CloseWithResponse()
	var se *smtp.SMTPError
	switch {
	case err == nil:
		enh, text := parseReplyText(resp.StatusText)
		return &cmv1.SMTPReply{Code: 250, EnhancedCode: enh, Text: text, Host: tg.host}, nil
	case errors.As(err, &se) && se.Code/100 == 2:
		// Accepted with a code other than 250: still accepted.
		return replyOf(err, tg.host), nil
	default:
		return nil, &stepError{"end of data", tg.host, err}
	}
}

// rset sends RSET (RFC 5321 §4.1.1.5) and expects 250: it ends whatever
// transaction a refused RCPT left open and proves a pooled connection is
// still alive. go-smtp's Client.Reset would also send a new EHLO, so the
// command is written here, as STARTTLS is.
func (ss *session) rset(timeout time.Duration) error {
	_ = ss.cmd.SetDeadline(time.Now().Add(timeout))
	defer ss.cmd.SetDeadline(time.Time{})
	if _, err := io.WriteString(ss.cmd, "RSET\r\n"); err != nil {
		return err
	}
	// The server sends nothing unasked, so this reader reads the reply
	// and nothing more.
	_, _, err := textproto.NewReader(bufio.NewReaderSize(ss.cmd, 512)).ReadResponse(250)
	return err
}

// quit ends the session politely (QUIT, RFC 5321 §4.1.1.10) when it is
// still in a state to, and closes it.
func (ss *session) quit(timeout time.Duration, polite bool) {
	if polite {
		ss.c.CommandTimeout = min(ss.c.CommandTimeout, timeout)
		_ = ss.c.Quit()
	}
	ss.close()
}

func (ss *session) close() { _ = ss.raw.Close() }

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
	tr.note("%s", tlsSummary(tc, cfg.InsecureSkipVerify))
	return tc, nil
}

// tlsSummary describes an established TLS session for transcripts.
func tlsSummary(tc *tls.Conn, unverified bool) string {
	st := tc.ConnectionState()
	verified := "certificate verified"
	if unverified {
		verified = "certificate not verified (opportunistic)"
	}
	return fmt.Sprintf("TLS established: %s, %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), verified)
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
