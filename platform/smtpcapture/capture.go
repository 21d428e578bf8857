// Package smtpcapture is a local SMTP server that accepts mail for any
// recipient and keeps it in memory, so a developer sees what chattermail
// sent without a real mail server, and tests can assert on it. It serves
// the captured mail as JSON over HTTP (Handler).
//
// It is meant for loopback only: it relays nothing and accepts everything.
// Tests can make it answer like a real server with Reject.
package smtpcapture

import (
	"bytes"
	"context"
	"encoding/json"

	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one captured mail.
type Message struct {
	// ID counts captured messages from 1.
	ID int `json:"id"`
	// From is the envelope sender (MAIL FROM).
	From string `json:"mail_from"`
	// To is the envelope recipients accepted for this message.
	To []string `json:"rcpt_to"`
	// Received is when the DATA command completed.
	Received time.Time `json:"received"`
	// Raw is the message as received.
	Raw []byte `json:"-"`
}

// Header parses the header of m.
func (m *Message) Header() (mail.Header, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Raw))
	if err != nil {
		return nil, err
	}
	return msg.Header, nil
}

// Reject decides how the server answers a recipient; a nil result accepts
// it. Return an *smtp.SMTPError to choose the code.
type Reject func(from, rcpt string) error

// Server is a capturing SMTP server.
type Server struct {
	smtp *smtp.Server
	ln   net.Listener

	mu       sync.Mutex
	messages []*Message
	reject   Reject
	notify   chan struct{}
}

// Listen starts a capture on addr (for example "127.0.0.1:2525", or
// "127.0.0.1:0" for a free port) and serves it until Close.
func Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("smtpcapture: %w", err)
	}
	s := &Server{ln: ln, notify: make(chan struct{})}
	s.smtp = smtp.NewServer(s)
	s.smtp.Domain = "capture.localhost"
	s.smtp.ReadTimeout = time.Minute
	s.smtp.WriteTimeout = time.Minute
	s.smtp.MaxMessageBytes = 50 << 20
	s.smtp.MaxRecipients = 1000
	go func() { _ = s.smtp.Serve(ln) }()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// HostPort splits Addr into host and port.
func (s *Server) HostPort() (string, int) {
	h, p, _ := net.SplitHostPort(s.Addr())
	n, _ := strconv.Atoi(p)
	return h, n
}

// Close stops the server.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.smtp.Shutdown(ctx)
}

// SetReject installs (or with nil removes) a recipient policy.
func (s *Server) SetReject(r Reject) {
	s.mu.Lock()
	s.reject = r
	s.mu.Unlock()
}

// Messages returns the captured messages, oldest first.
func (s *Server) Messages() []*Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Message(nil), s.messages...)
}

// Wait returns once at least n messages were captured, or ctx is done.
func (s *Server) Wait(ctx context.Context, n int) ([]*Message, error) {
	for {
		s.mu.Lock()
		msgs, ch := append([]*Message(nil), s.messages...), s.notify
		s.mu.Unlock()
		if len(msgs) >= n {
			return msgs, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return msgs, fmt.Errorf("smtpcapture: %d of %d messages: %w", len(msgs), n, ctx.Err())
		}
	}
}

func (s *Server) add(m *Message) {
	s.mu.Lock()
	m.ID = len(s.messages) + 1
	s.messages = append(s.messages, m)
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
}

// NewSession implements smtp.Backend.
func (s *Server) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &session{srv: s}, nil
}

type session struct {
	srv  *Server
	from string
	to   []string
}

func (se *session) Mail(from string, _ *smtp.MailOptions) error {
	se.from = from
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	se.srv.mu.Lock()
	reject := se.srv.reject
	se.srv.mu.Unlock()
	if reject != nil {
		if err := reject(se.from, to); err != nil {
			return err
		}
	}
	se.to = append(se.to, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	se.srv.add(&Message{From: se.from, To: se.to, Received: time.Now(), Raw: raw})
	return nil
}

func (se *session) Reset() {
	se.from = ""
	se.to = nil
}

func (se *session) Logout() error { return nil }

// Handler serves the captured mail:
//
//	GET /            JSON list: id, mail_from, rcpt_to, received, and the
//	                 From, To, Subject, Message-ID headers
//	GET /{id}        the raw message (message/rfc822)
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		type item struct {
			*Message
			Headers map[string]string `json:"headers"`
			Size    int               `json:"size"`
		}
		list := []item{}
		for _, m := range s.Messages() {
			it := item{Message: m, Headers: map[string]string{}, Size: len(m.Raw)}
			if h, err := m.Header(); err == nil {
				for _, k := range []string{"From", "To", "Subject", "Message-Id", "References", "Reply-To"} {
					if v := h.Get(k); v != "" {
						it.Headers[k] = v
					}
				}
			}
			list = append(list, it)
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(list)
	})
	mux.HandleFunc("GET /{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		msgs := s.Messages()
		if err != nil || id < 1 || id > len(msgs) {
			http.Error(w, "no such message", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "message/rfc822")
		_, _ = w.Write(msgs[id-1].Raw)
	})
	return mux
}
