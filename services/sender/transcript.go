package sender

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
)

// maxTranscript bounds a transcript, which travels inside a MailEvent.
const maxTranscript = 32 << 10

// transcript records one SMTP conversation as the client saw it, one line
// per command or reply line: "C: " for what was sent, "S: " for what was
// received and "* " for notes (connection, TLS). It records the plain-text
// side of the connection only (wrap is applied above TLS), so a STARTTLS
// session stays readable. Credentials never appear: the AUTH command and
// the client's answers to 334 challenges are redacted. The message itself
// is counted, not kept.
//
// A transcript is safe for concurrent use.
type transcript struct {
	mu        sync.Mutex
	out       strings.Builder
	partial   [2][]byte // unfinished line per direction
	last      direction
	expectMsg bool // DATA was sent; a 354 starts the message
	inMsg     bool // client bytes are the message
	msgBytes  int
	inAuth    bool // AUTH was sent; client lines are credentials
	truncated bool
}

type direction int

const (
	sent direction = iota
	received
)

// wrap returns conn recording its traffic into t.
func (t *transcript) wrap(conn net.Conn) *recordedConn {
	c := &recordedConn{Conn: conn}
	c.t.Store(t)
	return c
}

// recordedConn is a net.Conn whose reads and writes are copied to a
// transcript; deadlines and Close go to the wrapped connection. A pooled
// connection carries several mails: use switches it to the next mail's
// transcript.
type recordedConn struct {
	net.Conn
	t atomic.Pointer[transcript]
}

// use makes the connection record into t from now on.
func (c *recordedConn) use(t *transcript) { c.t.Store(t) }

func (c *recordedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.t.Load().record(received, p[:n])
	return n, err
}

func (c *recordedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.t.Load().record(sent, p[:n])
	return n, err
}

// note adds a line about the connection itself.
func (t *transcript) note(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.flushPartial()
	t.line("* " + fmt.Sprintf(format, args...))
}

// String returns the conversation so far.
func (t *transcript) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.flushPartial()
	if t.inMsg {
		t.line(fmt.Sprintf("C: [message: %d octets sent, no answer]", t.msgBytes))
		t.inMsg = false
	}
	return t.out.String()
}

func (t *transcript) record(d direction, p []byte) {
	if len(p) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if d != t.last {
		t.flushPartial()
		t.last = d
	}
	if t.inMsg {
		if d == sent {
			t.msgBytes += len(p)
			return
		}
		t.line(fmt.Sprintf("C: [message: %d octets, not recorded]", t.msgBytes))
		t.inMsg = false
	}
	buf := append(t.partial[d], p...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		t.lineFrom(d, string(bytes.TrimRight(buf[:i], "\r")))
		buf = buf[i+1:]
	}
	t.partial[d] = append(t.partial[d][:0], buf...)
}

// flushPartial writes unfinished lines out.
func (t *transcript) flushPartial() {
	for d := range t.partial {
		if len(t.partial[d]) > 0 {
			t.lineFrom(direction(d), string(t.partial[d]))
			t.partial[d] = t.partial[d][:0]
		}
	}
}

// lineFrom records one protocol line, redacting credentials and following
// the DATA and AUTH exchanges (RFC 5321 §4.1.1.4, RFC 4954 §4).
func (t *transcript) lineFrom(d direction, l string) {
	if d == sent {
		verb, _, _ := strings.Cut(l, " ")
		switch {
		case strings.EqualFold(verb, "AUTH"):
			fields := strings.Fields(l)
			if len(fields) > 2 {
				l = fields[0] + " " + fields[1] + " <redacted>"
			}
			t.inAuth = true
		case t.inAuth:
			l = "<redacted>"
		case strings.EqualFold(l, "DATA"):
			t.expectMsg = true
		}
		t.line("C: " + l)
		return
	}
	t.line("S: " + l)
	if len(l) >= 4 && l[3] == '-' {
		return // more lines of this reply follow
	}
	code := l[:min(3, len(l))]
	if t.inAuth && code != "334" {
		t.inAuth = false
	}
	if t.expectMsg {
		t.expectMsg = false
		t.inMsg = code == "354"
		t.msgBytes = 0
	}
}

func (t *transcript) line(s string) {
	if t.truncated {
		return
	}
	if t.out.Len()+len(s)+1 > maxTranscript {
		t.out.WriteString("* transcript truncated\n")
		t.truncated = true
		return
	}
	t.out.WriteString(s)
	t.out.WriteByte('\n')
}
