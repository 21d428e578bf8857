package quote

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"

	"golang.org/x/text/encoding/htmlindex"
)

// MaxDepth is how deep Parts descends into nested multiparts.
const MaxDepth = 8

// maxPart bounds the bytes read from one part.
const maxPart = 8 << 20

// ErrMalformed wraps a message whose MIME structure cannot be read.
var ErrMalformed = errors.New("quote: malformed MIME")

// Parts returns the first text/plain and the first text/html body of a
// message (RFC 2045, RFC 2046), decoded from their transfer encoding and
// charset to UTF-8, skipping attachments and nested messages. A broken
// multipart gives the parts read before the damage and an error wrapping
// ErrMalformed.
func Parts(m *mail.Message) (text, html string, err error) {
	p := &partWalker{}
	err = p.walk(textproto.MIMEHeader(m.Header), m.Body, 0)
	return p.text, p.html, err
}

type partWalker struct {
	text, html         string
	haveText, haveHTML bool
}

func (p *partWalker) walk(h textproto.MIMEHeader, body io.Reader, depth int) error {
	ct := h.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil {
		mt, params = "text/plain", map[string]string{}
	}
	if d, _, _ := mime.ParseMediaType(h.Get("Content-Disposition")); d == "attachment" {
		return nil
	}
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		if depth >= MaxDepth {
			return fmt.Errorf("%w: multiparts nested deeper than %d", ErrMalformed, MaxDepth)
		}
		if params["boundary"] == "" {
			return fmt.Errorf("%w: %s without boundary", ErrMalformed, mt)
		}
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextRawPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%w: %v", ErrMalformed, err)
			}
			if err := p.walk(part.Header, part, depth+1); err != nil {
				return err
			}
		}
	case mt == "text/plain" && !p.haveText, mt == "text/html" && !p.haveHTML:
		s, err := decode(h, params["charset"], body)
		if err != nil {
			return err
		}
		if mt == "text/plain" {
			p.text, p.haveText = s, true
		} else {
			p.html, p.haveHTML = s, true
		}
	}
	return nil
}

// decode undoes the transfer encoding (RFC 2045 §6) and converts the
// charset to UTF-8; an unknown charset is read as UTF-8.
func decode(h textproto.MIMEHeader, charset string, body io.Reader) (string, error) {
	var r io.Reader = io.LimitReader(body, maxPart)
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, &stripSpace{r: r})
	}
	raw, err := io.ReadAll(r)
	if err != nil && len(raw) == 0 {
		return "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	cs := strings.ToLower(strings.TrimSpace(charset))
	if cs != "" && cs != "utf-8" && cs != "us-ascii" {
		if enc, err := htmlindex.Get(cs); err == nil {
			if out, err := enc.NewDecoder().Bytes(raw); err == nil {
				raw = out
			}
		}
	}
	return strings.ToValidUTF8(string(raw), "\uFFFD"), nil
}

// stripSpace drops CR, LF, spaces and tabs, which base64 bodies carry
// between lines.
type stripSpace struct{ r io.Reader }

func (s *stripSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c != '\r' && c != '\n' && c != ' ' && c != '\t' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// Reply is what Extract finds in a reply.
type Reply struct {
	// Text is what the author wrote, from the text part, else from the
	// HTML part.
	Text string
	// FromText and FromHTML are the stripped text of each part; empty
	// when the message has no such part.
	FromText, FromHTML string
}

// Extract reads a raw reply and strips quotes and signatures from its
// text and HTML parts.
func Extract(raw []byte) (Reply, error) {
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return Reply{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	text, html, err := Parts(m)
	r := Reply{}
	if text != "" {
		r.FromText = Text(text)
	}
	if html != "" {
		r.FromHTML = HTML(html)
	}
	r.Text = r.FromText
	if r.Text == "" {
		r.Text = r.FromHTML
	}
	return r, err
}
