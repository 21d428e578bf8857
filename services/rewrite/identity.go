package rewrite

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/replytoken"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// ErrInvalidMail is returned for a mail that can never be sent as it is
// (no recipient address, a malformed Message-ID, a claim a token cannot
// carry). Like ErrInvalidAuthor, the mail fails; nothing is sent.
var ErrInvalidMail = errors.New("rewrite: invalid mail")

// ReplyAlias is the local part of the per-recipient Reply-To address,
// reply+<token>@<alias domain> (mail-rules §6).
const ReplyAlias = "reply"

// Identity header fields set on every mail (mail-rules §6): vacation
// responders stay quiet (RFC 3834 §5; Exchange's X-Auto-Response-Suppress).
var identityHeaders = []*cmv1.Header{
	{Name: "Auto-Submitted", Value: "auto-generated"},
	{Name: "X-Auto-Response-Suppress", Value: "All"},
}

// TokenSigner signs reply and VERP tokens; *replytoken.Keys is one.
type TokenSigner interface {
	Sign(replytoken.Claims) (string, error)
}

var _ TokenSigner = (*replytoken.Keys)(nil)

// Rewriter decides and applies the outgoing identity of mails for every
// tenant of a configuration. The rewrite stage and "chattermail rewrite
// explain" share it, so explain shows exactly what the stage does. It is
// safe for concurrent use.
type Rewriter struct {
	rules  map[string]*Rules
	dmarc  PolicySource
	tokens TokenSigner
}

// NewRewriter compiles every tenant of cfg (see CompileTenant). dmarc may
// be nil (no DMARC check, mail-rules §5 off); tokens may be nil only for
// Explain (Apply needs it).
func NewRewriter(cfg *config.Config, dmarc PolicySource, tokens TokenSigner) (*Rewriter, error) {
	w := &Rewriter{rules: map[string]*Rules{}, dmarc: dmarc, tokens: tokens}
	for _, id := range cfg.IDs() {
		r, err := CompileTenant(cfg.Tenant(id))
		if err != nil {
			return nil, err
		}
		w.rules[id] = r
	}
	return w, nil
}

// Rules returns the rules of tenant id, or nil.
func (w *Rewriter) Rules(id string) *Rules { return w.rules[id] }

// Apply sets m's identity for its tenant: the From decision with its
// reason, the envelope (IDNA, VERP), the per-recipient Reply-To with its
// signed token, Message-ID and References (parent then self), and the
// headers that keep auto-responders quiet (mail-rules §3-§6). It returns
// an error wrapping ErrInvalidAuthor or ErrInvalidMail for input that can
// never be sent, and one wrapping ErrDMARCTemporary when on is
// DNSFailureError and the author's DMARC policy could not be looked up.
func (w *Rewriter) Apply(ctx context.Context, m *cmv1.OutboundMail, on OnDNSFailure) error {
	r := w.rules[m.GetTenant()]
	if r == nil {
		return fmt.Errorf("%w: unknown tenant %q", ErrInvalidMail, m.GetTenant())
	}
	if w.tokens == nil {
		return errors.New("rewrite: no token signer")
	}
	a, err := ParseAuthor(m.GetAuthor().GetName(), m.GetAuthor().GetEmail())
	if err != nil {
		return err
	}
	rcpt, err := parseOne(m.GetRecipient().GetEmail())
	if err != nil || strings.ContainsAny(m.GetRecipient().GetEmail(), "\r\n\x00") || rcpt.Name != "" {
		return fmt.Errorf("%w: recipient %q is not one plain address", ErrInvalidMail, m.GetRecipient().GetEmail())
	}
	rcptNorm, _ := normalize(rcpt.Address)
	rcptWire, err := WireAddress(rcpt.Address)
	if err != nil {
		return fmt.Errorf("%w: recipient: %v", ErrInvalidMail, err)
	}
	if err := r.threadIDs(m); err != nil {
		return err
	}
	d, err := r.Decide(ctx, a, w.dmarc, on)
	if err != nil {
		return err
	}

	mailFrom, err := WireAddress(d.EnvelopeFrom)
	if err != nil {
		return fmt.Errorf("%w: envelope: %v", ErrInvalidAuthor, err)
	}
	if d.Bounce && r.verp {
		// §4: bounce+<token>@<alias domain>, one per recipient; same domain,
		// so SPF and the server choice are unchanged.
		tok, err := w.tokens.Sign(replytoken.Claims{Kind: replytoken.KindBounce, Tenant: r.tenant, Mail: m.GetMailId(), Recipient: rcptNorm})
		if err != nil {
			return fmt.Errorf("%w: VERP token: %v", ErrInvalidMail, err)
		}
		local := r.bounce[:strings.LastIndexByte(r.bounce, '@')]
		mailFrom = local + "+" + tok + "@" + r.aliasDomain
		d.From.Reason += " (VERP: " + local + "+<token>@" + r.aliasDomain + " per recipient)"
	}
	m.From = d.From
	m.Envelope = &cmv1.Envelope{MailFrom: mailFrom, RcptTo: rcptWire}

	// §6: Reply-To is the thread's reply address, never the rewritten From.
	m.ReplyTo = ""
	if r.aliasDomain != "" {
		tok, err := w.tokens.Sign(replytoken.Claims{Kind: replytoken.KindReply, Tenant: r.tenant,
			ThreadModel: m.GetThread().GetModel(), ThreadID: m.GetThread().GetId(), Message: m.GetMessageId(), Recipient: rcptNorm})
		if err != nil {
			return fmt.Errorf("%w: reply token: %v", ErrInvalidMail, err)
		}
		m.ReplyTo = ReplyAlias + "+" + tok + "@" + r.aliasDomain
	}
	m.Headers = slices.DeleteFunc(m.Headers, func(h *cmv1.Header) bool {
		return slices.ContainsFunc(identityHeaders, func(i *cmv1.Header) bool { return strings.EqualFold(i.GetName(), h.GetName()) })
	})
	for _, h := range identityHeaders {
		m.Headers = append(m.Headers, &cmv1.Header{Name: h.GetName(), Value: h.GetValue()})
	}
	return nil
}

// threadIDs checks m's thread and makes its Message-ID and References
// whole (mail-rules §6): every copy of a post shares the Message-ID
// <post id>@<alias domain> (set by ingest; derived here the same way when
// missing), and References lists the parent's id (In-Reply-To) then the
// message's own, after any older ids.
func (r *Rules) threadIDs(m *cmv1.OutboundMail) error {
	if m.GetThread().GetModel() == "" || m.GetThread().GetId() == "" {
		return fmt.Errorf("%w: no thread", ErrInvalidMail)
	}
	id := strings.Trim(m.GetMessageId(), "<>")
	if id == "" && m.GetPostId() != "" && r.aliasDomain != "" {
		id = m.GetPostId() + "@" + r.aliasDomain
	}
	if !validMessageID(id) {
		return fmt.Errorf("%w: Message-ID %q", ErrInvalidMail, m.GetMessageId())
	}
	parent := strings.Trim(m.GetInReplyTo(), "<>")
	if parent != "" && !validMessageID(parent) {
		return fmt.Errorf("%w: In-Reply-To %q", ErrInvalidMail, m.GetInReplyTo())
	}
	var refs []string
	for _, ref := range m.GetReferences() {
		ref = strings.Trim(ref, "<>")
		if !validMessageID(ref) {
			return fmt.Errorf("%w: References id %q", ErrInvalidMail, ref)
		}
		if ref != id && ref != parent && !slices.Contains(refs, ref) {
			refs = append(refs, ref)
		}
	}
	if parent != "" && parent != id {
		refs = append(refs, parent)
	}
	m.MessageId, m.InReplyTo, m.References = id, parent, append(refs, id)
	return nil
}

// validMessageID accepts an RFC 5322 msg-id (§3.6.4) without its angle
// brackets: id-left "@" id-right, printable ASCII without spaces or angle
// brackets.
func validMessageID(id string) bool {
	at := strings.LastIndexByte(id, '@')
	if at <= 0 || at == len(id)-1 || len(id) > 998 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= 0x20 || c > 0x7e || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// Explanation is what "chattermail rewrite explain" prints.
type Explanation struct {
	Tenant string `json:"tenant"`
	Author string `json:"author"`
	// From is the From header on the wire.
	From string `json:"from"`
	// SendingAddress is the address in From.
	SendingAddress string `json:"sending_address"`
	// EnvelopeFrom is the envelope sender by the rule of mail-rules §4.
	EnvelopeFrom string `json:"envelope_from"`
	// EnvelopeOnWire is MAIL FROM as sent: IDNA, and the VERP form of the
	// bounce address (its token differs per recipient).
	EnvelopeOnWire string `json:"envelope_on_wire"`
	// Server is the chosen server's name, or "default" for the tenant's
	// default delivery (DefaultDelivery is then true).
	Server          string `json:"server"`
	DefaultDelivery bool   `json:"default_delivery,omitempty"`
	// Step is the rule that decided, e.g. "author_domain".
	Step         string `json:"step"`
	Reason       string `json:"reason"`
	Encapsulated bool   `json:"encapsulated"`
	DMARCPolicy  string `json:"dmarc_policy,omitempty"`
	Warning      string `json:"warning,omitempty"`
	// DNSError is set when the DMARC lookup failed: the decision shown is
	// then the one the stage makes after its last retry.
	DNSError string `json:"dns_error,omitempty"`
	// ConfigWarnings are the tenant's configuration problems that would
	// make some of its mail fail DMARC (see Rules.Warnings).
	ConfigWarnings []string `json:"config_warnings,omitempty"`
}

// Explain decides the identity of a mail by author (an address, with or
// without display name: "Bob <bob@example.com>") for tenant id, through
// the same Decide the stage uses. When the DMARC lookup fails temporarily
// it shows the decision of the stage's last attempt, with DNSError set.
func (w *Rewriter) Explain(ctx context.Context, id, author string) (Explanation, error) {
	r := w.rules[id]
	if r == nil {
		return Explanation{}, fmt.Errorf("rewrite: unknown tenant %q", id)
	}
	a, err := ParseAuthor("", author)
	if err != nil {
		return Explanation{}, err
	}
	e := Explanation{Tenant: id, Author: a.String(), ConfigWarnings: r.Warnings()}
	d, err := r.Decide(ctx, a, w.dmarc, DNSFailureError)
	if errors.Is(err, ErrDMARCTemporary) {
		e.DNSError = err.Error()
		d, err = r.Decide(ctx, a, w.dmarc, DNSFailureRewrite)
	}
	if err != nil {
		return Explanation{}, err
	}
	e.From, e.SendingAddress, e.EnvelopeFrom = d.From.GetHeader(), d.From.GetSendingAddress(), d.EnvelopeFrom
	e.EnvelopeOnWire, _ = WireAddress(d.EnvelopeFrom)
	if d.Bounce && r.verp {
		local := r.bounce[:strings.LastIndexByte(r.bounce, '@')]
		e.EnvelopeOnWire = local + "+<token>@" + r.aliasDomain
	}
	e.Server = d.From.GetServer()
	if e.Server == "" {
		e.Server, e.DefaultDelivery = "default", true
	}
	e.Step = strings.ToLower(strings.TrimPrefix(d.From.GetStep().String(), "FROM_STEP_"))
	e.Reason, e.Encapsulated = d.From.GetReason(), d.From.GetEncapsulated()
	e.DMARCPolicy, e.Warning = d.From.GetDmarcPolicy(), d.From.GetWarning()
	return e, nil
}
