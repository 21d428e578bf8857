// Package dsn reads delivery status notifications, the bounces mail
// servers send back (RFC 3464 in a multipart/report, RFC 6522), and the
// older free-text bounces some servers still write.
//
// Parse returns, per failed recipient, the Final-Recipient, Action,
// Status (an RFC 3463 enhanced code such as 5.1.1) and Diagnostic-Code,
// and the Message-ID of the original message from the message/rfc822 or
// text/rfc822-headers part, which is how a bounce without a VERP address
// is attributed (mail-rules §7).
package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"regexp"
	"strings"
)

// Errors of Parse.
var (
	// ErrNotDSN is a message with no delivery status in it.
	ErrNotDSN = errors.New("dsn: not a delivery status notification")
	// ErrMalformed wraps a report that cannot be read.
	ErrMalformed = errors.New("dsn: malformed report")
)

// maxPart bounds the bytes read from one part.
const maxPart = 4 << 20

// Report is what a delivery status notification says.
type Report struct {
	// ReportingMTA is the Reporting-MTA field without its type.
	ReportingMTA string
	// Recipients are the per-recipient fields, in order.
	Recipients []Recipient
	// OriginalMessageID is the Message-ID of the bounced message, without
	// angle brackets; empty when the report quotes nothing.
	OriginalMessageID string
	// Structured is true for an RFC 3464 report, false for free text.
	Structured bool
}

// Recipient is one per-recipient block (RFC 3464 §2.3).
type Recipient struct {
	// FinalRecipient is the address, without its address type.
	FinalRecipient string
	// OriginalRecipient is the address as first given, when reported.
	OriginalRecipient string
	// Action is failed, delayed, delivered, relayed or expanded.
	Action string
	// Status is the enhanced status code (RFC 3463), for example "5.1.1".
	Status string
	// DiagnosticCode is the remote server's answer, without its type.
	DiagnosticCode string
}

// Permanent reports a hard bounce: a 5.x.x status, or action failed
// without a status.
func (r Recipient) Permanent() bool {
	if r.Status != "" {
		return strings.HasPrefix(r.Status, "5")
	}
	return strings.EqualFold(r.Action, "failed")
}

// Failed reports whether the block is a failure (failed or delayed), not
// a success notification.
func (r Recipient) Failed() bool {
	a := strings.ToLower(r.Action)
	return a == "failed" || a == "delayed" || (a == "" && r.Status != "" && r.Status[0] != '2')
}

var (
	statusRE = regexp.MustCompile(`\b([245])\.(\d{1,3})\.(\d{1,3})\b`)
	addrRE   = regexp.MustCompile(`<?([A-Za-z0-9.!#$%&'*+/=?^_{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?`)
	msgIDRE  = regexp.MustCompile(`(?im)^message-id:\s*<([^>\s]+)>`)
	smtpRE   = regexp.MustCompile(`\b([45]\d\d)[ -]`)
)

// Parse reads m (headers and body) as a bounce. A multipart/report with a
// message/delivery-status part is read field by field (RFC 3464 §2); a
// free-text bounce gives its first address and status code. ErrNotDSN
// when nothing looks like a delivery status.
func Parse(m *mail.Message) (*Report, error) {
	r := &Report{}
	mt, params, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	var text strings.Builder
	if err := walk(r, textproto.MIMEHeader(m.Header), mt, params, m.Body, &text, 0); err != nil {
		return nil, err
	}
	if r.Structured && len(r.Recipients) > 0 {
		return r, nil
	}
	// Free text (RFC 3464 §1 predecessors): the first status code and
	// the first address near it.
	body := text.String()
	if r.OriginalMessageID == "" {
		if mm := msgIDRE.FindStringSubmatch(body); mm != nil {
			r.OriginalMessageID = mm[1]
		}
	}
	st := statusRE.FindStringIndex(body)
	if st == nil {
		if sm := smtpRE.FindStringSubmatch(body); sm != nil && sm[1][0] == '5' {
			st = []int{0, 0}
		}
	}
	if st == nil {
		return nil, ErrNotDSN
	}
	rec := Recipient{Action: "failed"}
	if s := statusRE.FindString(body); s != "" {
		rec.Status = s
		if s[0] != '5' {
			rec.Action = "delayed"
		}
	} else {
		rec.Status = "5.0.0"
	}
	for _, a := range addrRE.FindAllStringSubmatch(body, -1) {
		if !strings.EqualFold(a[1], m.Header.Get("From")) && !strings.HasPrefix(strings.ToLower(a[1]), "mailer-daemon@") &&
			!strings.HasPrefix(strings.ToLower(a[1]), "postmaster@") {
			rec.FinalRecipient = a[1]
			break
		}
	}
	lineStart := strings.LastIndexByte(body[:st[0]], '\n') + 1
	lineEnd := strings.IndexByte(body[st[0]:], '\n')
	if lineEnd < 0 {
		lineEnd = len(body) - st[0]
	}
	rec.DiagnosticCode = strings.TrimSpace(body[lineStart : st[0]+lineEnd])
	r.Recipients = []Recipient{rec}
	return r, nil
}

func walk(r *Report, h textproto.MIMEHeader, mt string, params map[string]string, body io.Reader, text *strings.Builder, depth int) error {
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		if depth > 6 || params["boundary"] == "" {
			return fmt.Errorf("%w: %s", ErrMalformed, mt)
		}
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				if r.Structured {
					return nil // what was read is enough
				}
				return fmt.Errorf("%w: %v", ErrMalformed, err)
			}
			pmt, pparams, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if pmt == "" {
				pmt = "text/plain"
			}
			if err := walk(r, p.Header, pmt, pparams, p, text, depth+1); err != nil {
				return err
			}
		}
	case mt == "message/delivery-status", mt == "message/global-delivery-status":
		b, err := read(h, body)
		if err != nil {
			return err
		}
		return parseStatus(r, b)
	case mt == "message/rfc822", mt == "text/rfc822-headers", mt == "message/global", mt == "message/global-headers":
		b, err := read(h, body)
		if err != nil {
			return err
		}
		tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(append(b, "\r\n\r\n"...))))
		hdr, _ := tr.ReadMIMEHeader()
		if id := strings.Trim(strings.TrimSpace(hdr.Get("Message-Id")), "<>"); id != "" && r.OriginalMessageID == "" {
			r.OriginalMessageID = id
		}
	case mt == "" || strings.HasPrefix(mt, "text/"):
		b, err := read(h, body)
		if err != nil {
			return err
		}
		text.Write(b)
		text.WriteByte('\n')
	}
	return nil
}

func read(h textproto.MIMEHeader, body io.Reader) ([]byte, error) {
	var rd io.Reader = io.LimitReader(body, maxPart)
	if strings.EqualFold(strings.TrimSpace(h.Get("Content-Transfer-Encoding")), "quoted-printable") {
		rd = quotedprintable.NewReader(rd)
	}
	b, err := io.ReadAll(rd)
	if err != nil && len(b) == 0 {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return b, nil
}

// parseStatus reads the per-message block and the per-recipient blocks of
// a message/delivery-status body (RFC 3464 §2.2, §2.3): header-like
// fields in blocks separated by blank lines.
func parseStatus(r *Report, b []byte) error {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	blocks := bytes.Split(bytes.TrimSpace(b), []byte("\n\n"))
	for i, blk := range blocks {
		tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(append(bytes.TrimSpace(blk), "\n\n"...))))
		hdr, err := tr.ReadMIMEHeader()
		if err != nil && len(hdr) == 0 {
			continue
		}
		if i == 0 && hdr.Get("Reporting-Mta") != "" {
			r.ReportingMTA = untype(hdr.Get("Reporting-Mta"))
		}
		if hdr.Get("Final-Recipient") == "" && hdr.Get("Original-Recipient") == "" {
			continue
		}
		rec := Recipient{
			FinalRecipient:    strings.Trim(untype(hdr.Get("Final-Recipient")), "<>"),
			OriginalRecipient: strings.Trim(untype(hdr.Get("Original-Recipient")), "<>"),
			Action:            strings.ToLower(strings.TrimSpace(hdr.Get("Action"))),
			DiagnosticCode:    strings.Join(strings.Fields(untype(hdr.Get("Diagnostic-Code"))), " "),
		}
		if rec.FinalRecipient == "" {
			rec.FinalRecipient = rec.OriginalRecipient
		}
		if m := statusRE.FindString(hdr.Get("Status")); m != "" {
			rec.Status = m
		}
		r.Recipients = append(r.Recipients, rec)
	}
	if len(r.Recipients) == 0 {
		return fmt.Errorf("%w: delivery-status without a recipient block", ErrMalformed)
	}
	r.Structured = true
	return nil
}

// untype drops the "rfc822;" or "smtp;" type of a field (RFC 3464 §2.1.2).
func untype(v string) string {
	if _, rest, ok := strings.Cut(v, ";"); ok {
		return strings.TrimSpace(rest)
	}
	return strings.TrimSpace(v)
}
