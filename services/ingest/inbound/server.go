package inbound

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/chattermail/chattermail/services/ingest/msgindex"
	"github.com/emersion/go-smtp"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultMaxMessageBytes is the default message size limit: 25 MiB.
const DefaultMaxMessageBytes = 25 << 20

// MessageIndex finds the thread of a Message-ID; *msgindex.Index is one.
type MessageIndex interface {
	Lookup(ctx context.Context, tenant, messageID string) (msgindex.Entry, error)
}

var _ MessageIndex = (*msgindex.Index)(nil)

// ServerOptions configure NewServer.
type ServerOptions struct {
	// Config holds the tenants whose alias domains are served. Required.
	Config *config.Config
	// Tokens verifies reply and VERP tokens (the keys of rewrite). Required.
	Tokens TokenVerifier
	// Spool stores accepted messages. Required.
	Spool Spool
	// Index answers the catchall check at the end of DATA. Required.
	Index MessageIndex
	// Log gets one line per transaction; never bodies. Required.
	Log *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Hostname is the name in the greeting and Received fields; default
	// "localhost".
	Hostname string
	// MaxMessageBytes is the size limit (SIZE, RFC 1870); larger messages
	// get 552 5.3.4. Default DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// MaxRecipients per transaction; default 50 (452 above, RFC 5321
	// §4.5.3.1.10).
	MaxRecipients int
	// MaxConnections is the number of connections served at once; more
	// get 421 4.7.0. Default 200.
	MaxConnections int
	// MaxConnectionsPerIP is the number of connections one IP may hold at
	// once; default 10.
	MaxConnectionsPerIP int
	// MessagesPerIPPerMinute is how many transactions (MAIL FROM) one IP
	// may start per minute; more get 450 4.7.1. Default 60.
	MessagesPerIPPerMinute int
	// TLSConfig enables STARTTLS (RFC 3207) when set.
	TLSConfig *tls.Config
	// Timeout bounds each read and write; default 2 minutes.
	Timeout time.Duration
}

// Server is the inbound SMTP server.
type Server struct {
	o    ServerOptions
	dir  *Directory
	smtp *smtp.Server

	mu     sync.Mutex
	conns  int
	perIP  map[string]int
	starts map[string][]time.Time
}

// NewServer returns a server; call Serve.
func NewServer(o ServerOptions) (*Server, error) {
	if o.Config == nil || o.Tokens == nil || o.Spool == nil || o.Index == nil || o.Log == nil {
		return nil, errors.New("inbound: Config, Tokens, Spool, Index and Log are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.Hostname = cmp.Or(o.Hostname, "localhost")
	o.MaxMessageBytes = cmp.Or(o.MaxMessageBytes, DefaultMaxMessageBytes)
	o.MaxRecipients = cmp.Or(o.MaxRecipients, 50)
	o.MaxConnections = cmp.Or(o.MaxConnections, 200)
	o.MaxConnectionsPerIP = cmp.Or(o.MaxConnectionsPerIP, 10)
	o.MessagesPerIPPerMinute = cmp.Or(o.MessagesPerIPPerMinute, 60)
	o.Timeout = cmp.Or(o.Timeout, 2*time.Minute)
	s := &Server{o: o, dir: NewDirectory(o.Config, o.Tokens), perIP: map[string]int{}, starts: map[string][]time.Time{}}
	srv := smtp.NewServer(s)
	srv.Domain = o.Hostname
	srv.MaxMessageBytes = o.MaxMessageBytes
	srv.MaxRecipients = o.MaxRecipients
	// A reply address is ~150 characters; go-smtp's 2000 is plenty.
	srv.ReadTimeout, srv.WriteTimeout = o.Timeout, o.Timeout
	srv.TLSConfig = o.TLSConfig
	srv.EnableSMTPUTF8 = true
	s.smtp = srv
	return s, nil
}

// Serve accepts connections on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	err := s.smtp.Serve(ln)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Run serves on ln until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.smtp.Shutdown(sctx); err != nil {
		_ = s.smtp.Close()
	}
	return <-done
}

// Close stops the server at once.
func (s *Server) Close() error { return s.smtp.Close() }

var (
	errTooManyConns = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections, try again later"}
	errRate         = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Too many messages from your address, try again later"}
	errStore        = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure storing the message, try again later"}
	errBareLF       = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Bare LF in message: lines must end with CRLF (RFC 5321 section 2.3.8)"}
	errNoRcpt       = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "RCPT first"}
)

// NewSession implements smtp.Backend: it enforces the connection limits.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ip := remoteIP(c.Conn().RemoteAddr())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns >= s.o.MaxConnections || s.perIP[ip] >= s.o.MaxConnectionsPerIP {
		s.o.Log.Warn("inbound connection refused: too many", "ip", ip)
		return nil, errTooManyConns
	}
	s.conns++
	s.perIP[ip]++
	return &session{s: s, ip: ip, remote: c.Conn().RemoteAddr().String(), helo: c.Hostname()}, nil
}

func (s *Server) release(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns--
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
}

// allowStart records a transaction start for ip; false over the rate.
func (s *Server) allowStart(ip string) bool {
	now := s.o.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := s.starts[ip][:0]
	for _, t := range s.starts[ip] {
		if now.Sub(t) < time.Minute {
			keep = append(keep, t)
		}
	}
	if len(keep) >= s.o.MessagesPerIPPerMinute {
		s.starts[ip] = keep
		return false
	}
	s.starts[ip] = append(keep, now)
	if len(s.starts) > 100_000 { // bound memory under a flood of IPs
		clear(s.starts)
	}
	return true
}

func remoteIP(a net.Addr) string { return hostOf(a.String()) }

// hostOf is the host of a "host:port" address, or addr itself.
func hostOf(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// session is one SMTP connection.
type session struct {
	s                 *Server
	ip, remote, helo  string
	from              string
	rcpts             []Recipient
	released, hasMail bool
}

func (ss *session) Reset() {
	ss.from, ss.rcpts, ss.hasMail = "", nil, false
}

func (ss *session) Logout() error {
	if !ss.released {
		ss.released = true
		ss.s.release(ss.ip)
	}
	return nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if !ss.s.allowStart(ss.ip) {
		return errRate
	}
	ss.Reset()
	ss.from, ss.hasMail = from, true
	return nil
}

// Rcpt accepts only the tenants' reply, catchall and bounce addresses
// (RFC 5321 §3.6.2: no relaying), all of one tenant.
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	r, err := ss.s.dir.Classify(to)
	switch {
	case errors.Is(err, ErrRelayDenied):
		ss.s.o.Log.Info("inbound RCPT refused", "ip", ss.ip, "reason", "relay")
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied: this server only receives mail for its own domains"}
	case err != nil:
		ss.s.o.Log.Info("inbound RCPT refused", "ip", ss.ip, "reason", "unknown recipient")
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such recipient here"}
	}
	if len(ss.rcpts) > 0 && ss.rcpts[0].Tenant != r.Tenant {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Recipients of another domain: send them in a separate transaction"}
	}
	ss.rcpts = append(ss.rcpts, r)
	return nil
}

// Data reads the message, refuses what cannot be routed with a 5xx (RFC
// 5321 §4.2.5: the sending server then tells its user), and stores the
// rest before answering 250.
func (ss *session) Data(r io.Reader) error {
	if len(ss.rcpts) == 0 {
		return errNoRcpt
	}
	raw, err := io.ReadAll(r)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			ss.s.o.Log.Info("inbound message refused", "ip", ss.ip, "reason", se.Message)
			return se // 552 5.3.4 over the size limit
		}
		return err
	}
	tenant := ss.rcpts[0].Tenant
	status, h := ss.s.check(context.Background(), tenant, ss.from, ss.rcpts, raw)
	if status != nil {
		ss.s.o.Log.Info("inbound message refused", "tenant", tenant, "ip", ss.ip, "code", status.Code, "reason", status.Message)
		return status
	}
	m := &cmv1.InboundMail{
		Tenant:     tenant,
		InboundId:  newInboundID(),
		MailFrom:   ss.from,
		RemoteAddr: ss.remote,
		Helo:       ss.helo,
		ReceivedAt: timestamppb.New(ss.s.o.Now()),
		MessageId:  messageID(h),
	}
	for _, rc := range ss.rcpts {
		m.RcptTo = append(m.RcptTo, rc.Address)
	}
	trace := fmt.Sprintf("Received: from %s (%s)\r\n\tby %s (chattermail) with ESMTP id %s\r\n\tfor <%s>; %s\r\n",
		sanitizeTrace(ss.helo), ss.remote, ss.s.o.Hostname, m.InboundId, m.RcptTo[0], ss.s.o.Now().Format(time.RFC1123Z))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ss.s.o.Spool.Store(ctx, m, append([]byte(trace), raw...)); err != nil {
		ss.s.o.Log.Error("inbound message not stored", "tenant", tenant, "err", err)
		return errStore
	}
	ss.s.o.Log.Info("inbound message stored", "tenant", tenant, "inbound_id", m.InboundId, "size", len(raw), "rcpts", len(m.RcptTo))
	return nil
}

// check validates a message and refuses the ones with no route: nil
// status means store it.
func (s *Server) check(ctx context.Context, tenant, from string, rcpts []Recipient, raw []byte) (*smtp.SMTPError, mail.Header) {
	if hasBareLF(raw) {
		return errBareLF, nil
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Malformed message header (RFC 5322 section 2.2)"}, nil
	}
	h := msg.Header
	bounce, reply := looksLikeBounce(h), false
	for _, r := range rcpts {
		bounce = bounce || r.Kind == KindBounce
		reply = reply || r.Kind == KindReply
	}
	if bounce || reply {
		return nil, h
	}
	// Only the catchall: the message must answer a known thread
	// (mail-rules §7 steps 3-5); otherwise answer with a clear bounce.
	for _, id := range threadIDs(h) {
		if _, err := s.o.Index.Lookup(ctx, tenant, id); err == nil {
			return nil, h
		} else if !errors.Is(err, msgindex.ErrNotFound) {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure looking up the thread, try again later"}, nil
		}
	}
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: "This address only takes replies to messages of an existing discussion; none was found. Reply to a notification instead"}, nil
}

// hasBareLF reports an LF not preceded by CR.
func hasBareLF(b []byte) bool {
	for i := bytes.IndexByte(b, '\n'); i >= 0; {
		if i == 0 || b[i-1] != '\r' {
			return true
		}
		j := bytes.IndexByte(b[i+1:], '\n')
		if j < 0 {
			return false
		}
		i += j + 1
	}
	return false
}

func sanitizeTrace(s string) string {
	s = strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' || r == '(' || r == ')' {
			return '_'
		}
		return r
	}, s)
	if len(s) > 255 {
		s = s[:255]
	}
	return s
}

// newInboundID is 16 random bytes in lower-case base32: 26 characters.
func newInboundID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return kvkey.Encode(b[:])
}
