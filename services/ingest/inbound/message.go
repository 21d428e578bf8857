package inbound

import (
	"mime"
	"net/mail"
	"regexp"
	"strings"
)

// msgIDRE finds the ids of a References or In-Reply-To field (RFC 5322
// §3.6.4).
var msgIDRE = regexp.MustCompile(`<([^<>\s]+)>`)

// threadIDs returns the Message-IDs a message answers, the ones most
// likely to name its thread first: References newest (last) first, then
// In-Reply-To (mail-rules §7, step 3).
func threadIDs(h mail.Header) []string {
	var ids []string
	refs := msgIDRE.FindAllStringSubmatch(h.Get("References"), 50)
	for i := len(refs) - 1; i >= 0; i-- {
		ids = append(ids, refs[i][1])
	}
	for _, m := range msgIDRE.FindAllStringSubmatch(h.Get("In-Reply-To"), 5) {
		ids = append(ids, m[1])
	}
	return ids
}

// messageID is the Message-ID without angle brackets.
func messageID(h mail.Header) string {
	id := strings.TrimSpace(h.Get("Message-Id"))
	if m := msgIDRE.FindStringSubmatch(id); m != nil {
		return m[1]
	}
	if strings.ContainsAny(id, " \t\r\n") {
		return ""
	}
	return id
}

// looksLikeBounce reports whether a message is a bounce by its headers
// (mail-rules §7, step 2): the From local part mailer-daemon, or a
// multipart/report of report-type delivery-status (RFC 6522, RFC 3464).
func looksLikeBounce(h mail.Header) bool {
	mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if mt == "multipart/report" && strings.EqualFold(params["report-type"], "delivery-status") {
		return true
	}
	from := strings.ToLower(h.Get("From"))
	if a, err := mail.ParseAddress(h.Get("From")); err == nil {
		from = strings.ToLower(a.Address)
	}
	return strings.HasPrefix(from, "mailer-daemon@") || strings.Contains(from, "<mailer-daemon@")
}

// oooRE matches the subjects of out-of-office replies in the common
// languages and clients.
var oooRE = regexp.MustCompile(`(?i)^\s*(auto(matic|matische|matique)?[ -]?(reply|response|antwort|réponse)|out of (the )?office|abwesenheit\w*|absence|absent|ausser haus|außer haus|vacation|on vacation|urlaub|congés|fuera de la oficina|respuesta automática|risposta automatica|fuori ufficio|afwezig)\b`)

// Drop reasons of the loop and auto-reply defence (mail-rules §7). Each
// is logged and counted.
const (
	DropDuplicate     = "duplicate"
	DropAutoSubmitted = "auto-submitted"
	DropPrecedence    = "precedence"
	DropAutoReply     = "x-autoreply"
	DropNullSender    = "null-sender"
	DropOutOfOffice   = "out-of-office"
	DropRateLimit     = "rate-limit"
	DropNoRoute       = "no-route"
	DropUnattributed  = "unattributed-bounce"
	DropEmpty         = "empty-reply"
	DropAuthMismatch  = "auth-mismatch"
)

// autoReplyReason returns why a non-bounce is an automatic message, or "":
// Auto-Submitted other than "no" (RFC 3834 §5), Precedence bulk, junk,
// list or auto_reply, X-Autoreply or X-Autorespond, an empty envelope
// sender (RFC 3834 §3.1.4: responders do not answer one, so replies from
// one are automatic), or a typical out-of-office subject.
func autoReplyReason(h mail.Header, mailFrom string) string {
	if v := strings.ToLower(strings.TrimSpace(h.Get("Auto-Submitted"))); v != "" && !strings.HasPrefix(v, "no") {
		return DropAutoSubmitted
	}
	switch strings.ToLower(strings.TrimSpace(h.Get("Precedence"))) {
	case "bulk", "junk", "list", "auto_reply":
		return DropPrecedence
	}
	if h.Get("X-Autoreply") != "" || h.Get("X-Autorespond") != "" || h.Get("X-Autoresponder") != "" {
		return DropAutoReply
	}
	if mailFrom == "" {
		return DropNullSender
	}
	if oooRE.MatchString(decodeHeader(h.Get("Subject"))) {
		return DropOutOfOffice
	}
	return ""
}

var wordDecoder = &mime.WordDecoder{}

// decodeHeader decodes RFC 2047 words and makes the value one line of
// valid UTF-8 without control characters, so an encoded CR LF cannot
// inject a header into anything built from it.
func decodeHeader(v string) string {
	if d, err := wordDecoder.DecodeHeader(v); err == nil {
		v = d
	}
	v = strings.ToValidUTF8(v, "\uFFFD")
	v = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, v)
	return strings.Join(strings.Fields(v), " ")
}
