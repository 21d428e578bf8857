package sender

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io"
	"mime"
	"net/mail"
	"net/textproto"
	"regexp"
	"strings"
	"time"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/emersion/go-message"
)

// ErrInvalidMail wraps every reason Render refuses a mail: a missing field
// or a header value that would break the message (CR, LF, NUL).
var ErrInvalidMail = errors.New("sender: invalid mail")

// dateLayout is the RFC 5322 §3.3 date-time.
const dateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

// reservedHeaders are the fields Render writes itself; OutboundMail.Headers
// may not set them, so that a mail never carries two From or two
// Content-Type fields.
var reservedHeaders = map[string]bool{
	"From": true, "Sender": true, "To": true, "Cc": true, "Bcc": true, "Subject": true, "Date": true,
	"Message-Id": true, "In-Reply-To": true, "References": true, "Reply-To": true, "Return-Path": true,
	"Mime-Version": true, "Content-Type": true, "Content-Transfer-Encoding": true,
}

// Render returns m as an Internet message ready for SMTP DATA (RFC 5322):
// CRLF line endings, no line longer than 998 octets (§2.1.1) and only
// 7-bit characters, so it needs neither 8BITMIME nor SMTPUTF8.
//
// The header is, in this order: From (m.From.Header verbatim; rewrite has
// already encoded it), To (the recipient with its name), Subject (RFC 2047
// encoded words when not ASCII), Date (now), Message-ID, In-Reply-To,
// References, Reply-To, MIME-Version, then m.Headers in their order, then
// the content type. The body is multipart/alternative with a text/plain
// then a text/html part when the mail has HTML, the plain part being
// m.BodyText or, when that is empty, the HTML with its tags stripped; a
// mail without HTML is a single text/plain part. Parts are UTF-8 and
// quoted-printable.
//
// Render is deterministic: the same mail and clock give the same bytes,
// including the multipart boundary, so a retried delivery sends (and a
// DKIM signature covers) exactly what the first attempt did.
func Render(m *cmv1.OutboundMail, now time.Time) ([]byte, error) {
	fields, err := headerFields(m, now)
	if err != nil {
		return nil, err
	}
	text, htmlBody := m.GetBodyText(), m.GetBodyHtml()
	if text == "" && htmlBody != "" {
		text = htmlToText(htmlBody)
	}
	text, htmlBody = endWithNewline(text), endWithNewline(htmlBody)

	var buf bytes.Buffer
	if htmlBody == "" {
		fields = append(fields, textPartFields("text/plain")...)
		w, err := message.CreateWriter(&buf, newHeader(fields))
		if err != nil {
			return nil, fmt.Errorf("sender: render: %w", err)
		}
		if err := writeAndClose(w, text); err != nil {
			return nil, fmt.Errorf("sender: render: %w", err)
		}
		return buf.Bytes(), nil
	}

	ct := mime.FormatMediaType("multipart/alternative", map[string]string{"boundary": boundary(m, text, htmlBody)})
	fields = append(fields, field{"Content-Type", ct})
	w, err := message.CreateWriter(&buf, newHeader(fields))
	if err != nil {
		return nil, fmt.Errorf("sender: render: %w", err)
	}
	// RFC 2046 §5.1.4: the last part is the preferred one.
	for _, p := range []struct{ typ, body string }{{"text/plain", text}, {"text/html", htmlBody}} {
		pw, err := w.CreatePart(newHeader(textPartFields(p.typ)))
		if err != nil {
			return nil, fmt.Errorf("sender: render: %w", err)
		}
		if err := writeAndClose(pw, p.body); err != nil {
			return nil, fmt.Errorf("sender: render: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("sender: render: %w", err)
	}
	return buf.Bytes(), nil
}

// field is one header field, in the order it is written.
type field struct{ name, value string }

// headerFields returns the message header of m, validated, without the
// content type.
func headerFields(m *cmv1.OutboundMail, now time.Time) ([]field, error) {
	from := m.GetFrom().GetHeader()
	if from == "" {
		return nil, fmt.Errorf("%w: no From header (was the mail rewritten?)", ErrInvalidMail)
	}
	if !isASCII(from) {
		// Rewrite encodes non-ASCII names (RFC 2047); re-encode anything
		// that slipped through rather than send 8-bit header bytes.
		a, err := mail.ParseAddress(from)
		if err != nil {
			return nil, fmt.Errorf("%w: From %q: %v", ErrInvalidMail, from, err)
		}
		from = a.String()
	}
	rcpt := m.GetRecipient().GetEmail()
	if rcpt == "" {
		rcpt = m.GetEnvelope().GetRcptTo()
	}
	if rcpt == "" {
		return nil, fmt.Errorf("%w: no recipient", ErrInvalidMail)
	}
	if m.GetMessageId() == "" {
		return nil, fmt.Errorf("%w: no Message-ID", ErrInvalidMail)
	}
	to := (&mail.Address{Name: m.GetRecipient().GetName(), Address: rcpt}).String()

	fields := []field{
		{"From", from},
		{"To", to},
		{"Subject", mime.QEncoding.Encode("utf-8", m.GetSubject())},
		{"Date", now.Format(dateLayout)},
		{"Message-ID", msgID(m.GetMessageId())},
	}
	if id := m.GetInReplyTo(); id != "" {
		fields = append(fields, field{"In-Reply-To", msgID(id)})
	}
	if refs := m.GetReferences(); len(refs) > 0 {
		ids := make([]string, len(refs))
		for i, id := range refs {
			ids[i] = msgID(id)
		}
		fields = append(fields, field{"References", strings.Join(ids, " ")})
	}
	if rt := m.GetReplyTo(); rt != "" {
		fields = append(fields, field{"Reply-To", rt})
	}
	fields = append(fields, field{"MIME-Version", "1.0"})
	for _, h := range m.GetHeaders() {
		name := h.GetName()
		if !validFieldName(name) {
			return nil, fmt.Errorf("%w: header name %q", ErrInvalidMail, name)
		}
		if reservedHeaders[textproto.CanonicalMIMEHeaderKey(name)] {
			return nil, fmt.Errorf("%w: header %s is written by the sender and cannot be set", ErrInvalidMail, name)
		}
		v := h.GetValue()
		if !isASCII(v) {
			v = mime.QEncoding.Encode("utf-8", v)
		}
		fields = append(fields, field{name, v})
	}
	for _, f := range fields {
		if strings.ContainsAny(f.value, "\r\n\x00") {
			return nil, fmt.Errorf("%w: %s contains CR, LF or NUL", ErrInvalidMail, f.name)
		}
	}
	return fields, nil
}

// msgID writes a Message-ID as msg-id (RFC 5322 §3.6.4); ids travel
// without angle brackets.
func msgID(id string) string {
	return "<" + strings.Trim(id, "<>") + ">"
}

// textPartFields is the header of a UTF-8 quoted-printable text part.
func textPartFields(typ string) []field {
	return []field{
		{"Content-Type", mime.FormatMediaType(typ, map[string]string{"charset": "utf-8"})},
		{"Content-Transfer-Encoding", "quoted-printable"},
	}
}

// newHeader builds a go-message header that writes fields in their order.
// go-message writes the most recently added field first (it keeps fields
// in reverse so that DKIM can prepend), hence the reverse loop.
func newHeader(fields []field) message.Header {
	var h message.Header
	for i := len(fields) - 1; i >= 0; i-- {
		h.Add(fields[i].name, fields[i].value)
	}
	return h
}

func writeAndClose(w io.WriteCloser, body string) error {
	if _, err := io.WriteString(w, body); err != nil {
		return err
	}
	return w.Close()
}

// boundary derives the multipart boundary from the content, so Render is
// deterministic. It starts with "=_", which quoted-printable output never
// contains (RFC 2045 §6.7: '=' is only a soft break or an escape), so it
// cannot occur inside a part.
func boundary(m *cmv1.OutboundMail, text, htmlBody string) string {
	h := sha256.New()
	for _, s := range []string{m.GetMailId(), m.GetMessageId(), text, htmlBody} {
		io.WriteString(h, s)
		h.Write([]byte{0})
	}
	return "=_" + hex.EncodeToString(h.Sum(nil)[:16])
}

func endWithNewline(s string) string {
	if s == "" || strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
}

var (
	htmlDrop   = regexp.MustCompile(`(?is)<!--.*?-->|<(script|style|head|title)\b[^>]*>.*?</(script|style|head|title)\s*>`)
	htmlSpace  = regexp.MustCompile(`\s+`)
	htmlBreak  = regexp.MustCompile(`(?i)<br\s*/?>|<(p|h[1-6])\b[^>]*>|</(p|div|li|tr|h[1-6]|blockquote|pre|table|ul|ol)\s*>`)
	htmlTag    = regexp.MustCompile(`(?s)<[^>]*>`)
	blankLines = regexp.MustCompile(`\n{3,}`)
)

// htmlToText is the plain-text alternative of an HTML-only mail: block
// elements and <br> become line breaks, other tags are dropped, entities
// are decoded. Nothing fancier: the HTML part is the real content.
func htmlToText(s string) string {
	s = htmlDrop.ReplaceAllString(s, "")
	s = htmlSpace.ReplaceAllString(s, " ")
	s = htmlBreak.ReplaceAllString(s, "\n")
	s = htmlTag.ReplaceAllString(s, "")
	s = html.UnescapeString(s)
	s = strings.ReplaceAll(s, "\u00a0", " ")
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	s = blankLines.ReplaceAllString(strings.Join(lines, "\n"), "\n\n")
	return strings.TrimSpace(s)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// validFieldName reports whether name is a field name of RFC 5322 §3.6.8:
// printable ASCII except ':'.
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < '!' || c > '~' || c == ':' {
			return false
		}
	}
	return true
}
