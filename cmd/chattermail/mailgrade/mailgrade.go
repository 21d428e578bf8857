// Package mailgrade grades one delivered message the way a mail tester
// does: its DKIM signatures verify, SPF would pass for its envelope
// sender, it aligns with the From domain's DMARC policy, the headers
// receivers expect are there, and its size and lines are sane. Each check
// costs points when it fails; the score starts at 10.
package mailgrade

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/mail"
	"strings"

	"github.com/chattermail/chattermail/cmd/chattermail/domaincheck"
	"github.com/chattermail/chattermail/platform/domains"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/emersion/go-msgauth/dkim"
)

// MaxScore is the score of a message that passes every check.
const MaxScore = 10.0

// Item is one graded check.
type Item struct {
	Check  string  `json:"check"`
	Passed bool    `json:"passed"`
	Cost   float64 `json:"cost"`
	Detail string  `json:"detail"`
}

// Grade is the result for one message.
type Grade struct {
	Score float64 `json:"score"`
	Items []Item  `json:"items"`
}

func (g *Grade) add(check string, passed bool, cost float64, detail string) {
	if passed {
		cost = 0
	}
	g.Items = append(g.Items, Item{Check: check, Passed: passed, Cost: cost, Detail: detail})
	g.Score -= cost
}

// Input is what is graded.
type Input struct {
	// Raw is the message as the receiving server got it.
	Raw []byte
	// EnvelopeFrom is the MAIL FROM it was sent with.
	EnvelopeFrom string
	// SPF is the domain check's SPF verdict for the envelope domain and
	// the tenant's sending hosts.
	SPF domaincheck.Result
}

// Message grades in with DNS answered by dns.
func Message(ctx context.Context, dns resolver.Resolver, in Input) *Grade {
	g := &Grade{Score: MaxScore}
	msg, err := mail.ReadMessage(bytes.NewReader(in.Raw))
	if err != nil {
		g.add("parse", false, MaxScore, "the message does not parse: "+err.Error())
		return g
	}
	h := msg.Header
	from, err := mail.ParseAddress(h.Get("From"))
	fromDomain := ""
	if err == nil {
		fromDomain = domains.Of(from.Address)
	}
	g.add("from", err == nil, 3, "From: "+h.Get("From"))

	// Headers receivers and filters expect (RFC 5322 §3.6, RFC 2045 §4,
	// RFC 3834 §5 for Auto-Submitted).
	var missing []string
	for _, k := range []string{"Date", "From", "To", "Subject", "Message-Id", "Mime-Version", "Auto-Submitted"} {
		if h.Get(k) == "" {
			missing = append(missing, k)
		}
	}
	g.add("headers", len(missing) == 0, 1, missingText(missing))

	// One-click unsubscribe (RFC 2369, RFC 8058): bulk senders' guidelines
	// at the large mailbox providers require both headers.
	lu, lup := h.Get("List-Unsubscribe"), h.Get("List-Unsubscribe-Post")
	g.add("list-unsubscribe", lu != "" && strings.EqualFold(strings.TrimSpace(lup), "List-Unsubscribe=One-Click"), 1,
		fmt.Sprintf("List-Unsubscribe %q, List-Unsubscribe-Post %q", lu, lup))

	// DKIM (RFC 6376) with the published keys.
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(in.Raw), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			txt, _, err := dns.TXT(ctx, name)
			return txt, err
		},
	})
	var good, bad []string
	dkimAligned := false
	for _, v := range verifs {
		if v.Err != nil {
			bad = append(bad, fmt.Sprintf("d=%s: %v", v.Domain, v.Err))
			continue
		}
		good = append(good, "d="+v.Domain)
		if fromDomain != "" && domains.Organizational(v.Domain) == domains.Organizational(fromDomain) {
			dkimAligned = true
		}
	}
	switch {
	case err != nil:
		g.add("dkim", false, 2.5, "verification failed: "+err.Error())
	case len(verifs) == 0:
		g.add("dkim", false, 2.5, "the message is not DKIM-signed")
	default:
		g.add("dkim", len(bad) == 0, 2.5, "verified: "+strings.Join(good, ", ")+failedText(bad))
	}

	// SPF (RFC 7208) for the envelope domain.
	g.add("spf", in.SPF.Status == domaincheck.OK, 1.5, "envelope "+in.EnvelopeFrom+": "+in.SPF.Detail)

	// DMARC (RFC 7489 §3.1): relaxed alignment through DKIM or SPF.
	spfAligned := in.SPF.Status == domaincheck.OK && fromDomain != "" && domains.Organizational(domains.Of(in.EnvelopeFrom)) == domains.Organizational(fromDomain)
	g.add("dmarc", dkimAligned || spfAligned, 2,
		fmt.Sprintf("From domain %s: DKIM aligned %v, SPF aligned %v", fromDomain, dkimAligned, spfAligned))

	// Size and lines (RFC 5322 §2.1.1: at most 998 octets; CRLF only).
	long, bare := lineProblems(in.Raw)
	g.add("lines", long == 0 && bare == 0, 0.5, fmt.Sprintf("%d lines over 998 octets, %d bare LF", long, bare))
	g.add("size", len(in.Raw) <= 10<<20, 0.5, fmt.Sprintf("%d bytes", len(in.Raw)))
	if g.Score < 0 {
		g.Score = 0
	}
	return g
}

func missingText(missing []string) string {
	if len(missing) == 0 {
		return "all present"
	}
	return "missing: " + strings.Join(missing, ", ")
}

func failedText(bad []string) string {
	if len(bad) == 0 {
		return ""
	}
	return "; failed: " + strings.Join(bad, ", ")
}

func lineProblems(raw []byte) (long, bare int) {
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 0, 64<<10), len(raw)+1)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			return i + 1, data[:i+1], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasSuffix(line, []byte("\n")) && !bytes.HasSuffix(line, []byte("\r\n")) {
			bare++
		}
		if len(bytes.TrimRight(line, "\r\n")) > 998 {
			long++
		}
	}
	return long, bare
}
