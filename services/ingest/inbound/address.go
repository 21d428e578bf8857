// Package inbound receives mail for the tenants' alias domains and routes
// it back into chattermail (mail-rules §7): an SMTP server (Server) that
// accepts only the reply, catchall and bounce addresses of configured
// tenants and stores each message on inbound.mail.<tenant> (stream
// INBOUND) before it answers 250, and a router (Router) that consumes
// INBOUND and turns each message into a chatter post on its thread, a
// bounce attributed to the original mail, or a logged and counted drop.
//
// Never an open relay: every RCPT is checked against the tenants file
// (Directory) and anything else is refused at RCPT time (RFC 5321 §3.6.2,
// §7.1); mail that has no route is refused at the end of DATA with a 5xx,
// so the sending server tells its user (RFC 5321 §4.2.5).
package inbound

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/replytoken"
)

// ReplyAlias is the local part of reply addresses, reply+<token>@<alias
// domain>; it matches services/rewrite.ReplyAlias.
const ReplyAlias = "reply"

// MaxLocalPart is the longest local part accepted. Tokens make local parts
// of 120 to 150 characters, more than RFC 5321 §4.5.3.1.1's 64 octets
// (see package replytoken); this bound leaves room for key rotation.
const MaxLocalPart = 256

// Errors of Directory.Classify.
var (
	// ErrRelayDenied is an address outside every alias domain: 550 5.7.1.
	ErrRelayDenied = errors.New("inbound: relaying denied")
	// ErrNoSuchUser is an address of an alias domain that is not a reply,
	// catchall or bounce address, or whose token does not verify: 550 5.1.1.
	ErrNoSuchUser = errors.New("inbound: no such recipient")
)

// Kind is what an accepted address is for.
type Kind int

// Kinds of accepted addresses.
const (
	// KindReply is reply+<token>@<alias domain>.
	KindReply Kind = iota + 1
	// KindCatchall is <catchall_alias>@<alias domain>.
	KindCatchall
	// KindBounce is <bounce_alias>@<alias domain> or its VERP form
	// <bounce_alias>+<token>@<alias domain>.
	KindBounce
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindReply:
		return "reply"
	case KindCatchall:
		return "catchall"
	case KindBounce:
		return "bounce"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// TokenVerifier verifies reply and bounce tokens; *replytoken.Keys is one.
type TokenVerifier interface {
	Verify(token string) (replytoken.Claims, error)
}

var _ TokenVerifier = (*replytoken.Keys)(nil)

// Recipient is an accepted RCPT address.
type Recipient struct {
	// Address is the address as given, domain lower-cased.
	Address string
	// Tenant owns the address.
	Tenant string
	Kind   Kind
	// Claims are the verified token's, for reply and VERP addresses.
	Claims *replytoken.Claims
}

// Directory knows which addresses the tenants receive mail at. It is
// immutable and safe for concurrent use.
type Directory struct {
	byDomain map[string][]*config.Tenant
	tokens   TokenVerifier
}

// NewDirectory indexes cfg's alias domains.
func NewDirectory(cfg *config.Config, tokens TokenVerifier) *Directory {
	d := &Directory{byDomain: map[string][]*config.Tenant{}, tokens: tokens}
	for _, id := range cfg.IDs() {
		t := cfg.Tenant(id)
		d.byDomain[t.AliasDomain] = append(d.byDomain[t.AliasDomain], t)
	}
	return d
}

// localRE-free check: a local part of reply, catchall and bounce
// addresses is a dot-atom of letters, digits, '.', '_', '+' and '-'.
// Everything else (quoted strings, '%' and '!' routing, a second '@') is
// refused: those are how relays are abused (RFC 5321 §3.6.1, §7.1).
func plainLocal(s string) bool {
	if s == "" || len(s) > MaxLocalPart {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '+' || c == '-') {
			return false
		}
	}
	return true
}

// Classify says whether addr (a RCPT TO path as go-smtp hands it: source
// route dropped, quotes removed) is one of a tenant's reply, catchall or
// bounce addresses. Its errors wrap ErrRelayDenied or ErrNoSuchUser.
func (d *Directory) Classify(addr string) (Recipient, error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return Recipient{}, fmt.Errorf("%w: %q is not an address", ErrNoSuchUser, addr)
	}
	local, domain := addr[:at], strings.TrimSuffix(strings.ToLower(addr[at+1:]), ".")
	tenants := d.byDomain[domain]
	if len(tenants) == 0 {
		return Recipient{}, fmt.Errorf("%w: %s is not a domain of this server", ErrRelayDenied, domain)
	}
	if !plainLocal(local) {
		return Recipient{}, fmt.Errorf("%w: local part of %q", ErrNoSuchUser, addr)
	}
	r := Recipient{Address: local + "@" + domain}
	low := strings.ToLower(local)
	for _, t := range tenants {
		switch low {
		case strings.ToLower(t.CatchallAlias):
			r.Tenant, r.Kind = t.ID, KindCatchall
			return r, nil
		case strings.ToLower(t.BounceAlias):
			r.Tenant, r.Kind = t.ID, KindBounce
			return r, nil
		}
	}
	base, token, ok := strings.Cut(low, "+")
	if !ok || token == "" {
		return Recipient{}, fmt.Errorf("%w: %s", ErrNoSuchUser, addr)
	}
	c, err := d.tokens.Verify(token)
	if err != nil {
		return Recipient{}, fmt.Errorf("%w: %s: %v", ErrNoSuchUser, addr, err)
	}
	i := slices.IndexFunc(tenants, func(t *config.Tenant) bool { return t.ID == c.Tenant })
	if i < 0 {
		return Recipient{}, fmt.Errorf("%w: %s: token of tenant %q on another domain", ErrNoSuchUser, addr, c.Tenant)
	}
	switch {
	case base == ReplyAlias && c.Kind == replytoken.KindReply:
		r.Kind = KindReply
	case base == strings.ToLower(tenants[i].BounceAlias) && c.Kind == replytoken.KindBounce:
		r.Kind = KindBounce
	default:
		return Recipient{}, fmt.Errorf("%w: %s: a %s token under %q", ErrNoSuchUser, addr, c.Kind, base)
	}
	r.Tenant, r.Claims = c.Tenant, &c
	return r, nil
}
