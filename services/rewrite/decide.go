package rewrite

import (
	"context"
	"errors"
	"fmt"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// PolicySource finds a domain's DMARC policy; *DMARCPolicies is one. Its
// errors wrap ErrDMARCTemporary when the answer may come later.
type PolicySource interface {
	Policy(ctx context.Context, domain string) (DMARCPolicy, error)
}

var _ PolicySource = (*DMARCPolicies)(nil)

// OnDNSFailure says what Decide does when a DMARC lookup fails temporarily.
type OnDNSFailure int

const (
	// DNSFailureError returns the error (wrapping ErrDMARCTemporary), so
	// the caller can retry later. The service does this for the first
	// attempts of a mail.
	DNSFailureError OnDNSFailure = iota
	// DNSFailureRewrite sends as the notification address with the
	// author's name, which passes DMARC whatever the author's policy. The
	// service does this on a mail's last attempt.
	DNSFailureRewrite
)

// Decision is the identity of one mail: the From decision of §3-§5 and the
// envelope sender of §4.
type Decision struct {
	// From is the From decision with its reason, as it travels with the mail.
	From *cmv1.FromDecision
	// EnvelopeFrom is the envelope sender (MAIL FROM, Return-Path) by §4:
	// the bounce address when it matches the chosen server's filter, else
	// the sending address. It is what "rewrite explain" prints; on the
	// wire it is IDNA-encoded, and the bounce address takes its VERP form
	// per recipient (see Apply).
	EnvelopeFrom string
	// Bounce reports whether EnvelopeFrom is the bounce address.
	Bounce bool
}

// Decide applies the From rules (§3), the DMARC check (§5), encapsulation
// and the envelope rule (§4) to author a. dmarc may be nil: no DMARC
// check is made. When the DMARC lookup fails temporarily, on says whether
// to return the error or to rewrite.
func (r *Rules) Decide(ctx context.Context, a Author, dmarc PolicySource, on OnDNSFailure) (Decision, error) {
	c := r.choose(a)
	var policy DMARCPolicy
	mitigated, dnsFailed := false, false
	if c.asAuthor && dmarc != nil {
		if skip := r.dmarcExempt(a); skip != "" {
			c.why += "; no DMARC check: " + skip
		} else {
			var err error
			policy, err = dmarc.Policy(ctx, a.ASCIIDomain)
			switch {
			case err == nil && policy.Restrictive():
				mitigated = true
			case err == nil:
				c.why += "; " + policy.String() + ": the author is kept"
			case errors.Is(err, ErrDMARCTemporary) && on == DNSFailureRewrite:
				mitigated, dnsFailed = true, true
				policy.Note = err.Error()
			default:
				return Decision{}, err
			}
		}
	}
	if mitigated && r.notification == "" {
		// Nothing to send as instead; keep the author and say so.
		c.warning = fmt.Sprintf("author domain %s: %s, but the tenant has no notification address to send as", a.Domain, policy.String())
		c.why += "; " + c.warning
		mitigated = false
	}
	if mitigated {
		why := fmt.Sprintf("the rules would send as the author %s (%s), but", a.Norm, c.why)
		if dnsFailed {
			why += fmt.Sprintf(" the DMARC policy of %s could not be looked up (%s)", a.ASCIIDomain, policy.Note)
		} else {
			why += fmt.Sprintf(" %s and the tenant cannot sign for %s", policy.String(), a.ASCIIDomain)
		}
		nc := r.chooseNotification(a, why)
		c = choice{step: cmv1.FromStep_FROM_STEP_DMARC_MITIGATION, server: nc.server, why: nc.why, warning: nc.warning}
		if dnsFailed {
			c.warning = joinWarnings(c.warning, "DMARC lookup failed: "+policy.Note+"; sent as the notification address so that DMARC cannot reject the mail")
		}
	}
	return r.finish(a, c, policy)
}

// dmarcExempt returns why author a needs no DMARC check, or "": mail sent
// with an address on the tenant's own (organisational) domain, or one the
// tenant can sign for, or the notification address itself, passes DMARC
// or would not pass it any better rewritten.
func (r *Rules) dmarcExempt(a Author) string {
	switch {
	case r.notification != "" && a.Norm == r.notificationNorm:
		return "the author is the notification address"
	case r.aliasOrg != "" && OrganizationalDomain(a.ASCIIDomain) == r.aliasOrg:
		return fmt.Sprintf("%s is the tenant's own domain (alias domain %s)", a.Domain, r.aliasDomain)
	case r.CanSignFor(a.ASCIIDomain):
		return fmt.Sprintf("the tenant signs for %s (DKIM)", a.ASCIIDomain)
	}
	return ""
}

// finish renders the From header (with encapsulation) and applies the
// envelope rule of §4.
func (r *Rules) finish(a Author, c choice, policy DMARCPolicy) (Decision, error) {
	d := &cmv1.FromDecision{Step: c.step, Server: c.serverName(), Warning: c.warning, DmarcPolicy: policy.Policy}
	sending := a.Address
	if c.asAuthor || a.Norm == r.notificationNorm {
		// The author's own address, unchanged (§10 #5, #9).
		wire, err := WireAddress(a.Address)
		if err != nil {
			return Decision{}, fmt.Errorf("%w: %v", ErrInvalidAuthor, err)
		}
		d.Header = FormatAddress(a.Name, wire)
	} else {
		// §4: the author's name (or local part) on the notification address.
		sending = r.notification
		name := a.Name
		if name == "" {
			name = a.LocalPart()
		}
		wire, err := WireAddress(r.notification)
		if err != nil {
			return Decision{}, err
		}
		d.Header = FormatAddress(name, wire)
		d.Encapsulated = true
	}
	d.SendingAddress = sending

	out := Decision{From: d, EnvelopeFrom: sending}
	f := r.filter(c)
	where := "the default from filter"
	if c.server != nil {
		where = "server " + c.server.Name + "'s from_filter"
	}
	switch {
	case r.bounce == "":
		c.why += fmt.Sprintf("; envelope %s: the tenant has no bounce address", sending)
	case f.Matches(r.bounceNorm):
		out.EnvelopeFrom, out.Bounce = r.bounce, true
		c.why += fmt.Sprintf("; envelope %s: the bounce address matches %s", r.bounce, where)
	default:
		c.why += fmt.Sprintf("; envelope %s: the bounce address does not match %s", sending, where)
	}
	d.Reason = c.why
	return out, nil
}

func joinWarnings(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}
