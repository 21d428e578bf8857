package rewrite

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/emersion/go-msgauth/dmarc"
)

// ErrDMARCTemporary is a DMARC lookup that failed for now (SERVFAIL,
// timeout, network): the policy is unknown, so the mail waits or is
// rewritten, never sent as the author on a guess (mail-rules §5).
var ErrDMARCTemporary = errors.New("rewrite: DMARC lookup failed temporarily")

// DMARC policies (RFC 7489 §6.3, tag p).
const (
	PolicyNone       = "none"
	PolicyQuarantine = "quarantine"
	PolicyReject     = "reject"
)

// DMARCPolicy is what a domain's DMARC record says about mail from it.
type DMARCPolicy struct {
	// Domain is the domain asked about (ASCII).
	Domain string
	// Record is the name the record was found at, "_dmarc.<domain>" or
	// "_dmarc.<organisational domain>"; "" when there is none.
	Record string
	// Policy is the policy that applies to Domain: the record's p, or its
	// sp when the record is the organisational domain's and Domain is a
	// sub-domain (RFC 7489 §6.3). "" when no DMARC record applies.
	Policy string
	// Percent is the record's pct (default 100). Mitigation does not
	// depend on it: any share of rejected mail is too much.
	Percent int
	// Note explains anything unusual about the record.
	Note string
}

// Restrictive reports whether the policy asks receivers to quarantine or
// reject mail that fails DMARC.
func (p DMARCPolicy) Restrictive() bool {
	return p.Policy == PolicyQuarantine || p.Policy == PolicyReject
}

// String describes the policy for a decision's reason.
func (p DMARCPolicy) String() string {
	if p.Record == "" {
		s := "no DMARC record at _dmarc." + p.Domain
		if org := OrganizationalDomain(p.Domain); org != p.Domain {
			s += " or _dmarc." + org
		}
		if p.Note != "" {
			s += " (" + p.Note + ")"
		}
		return s
	}
	s := fmt.Sprintf("DMARC p=%s at %s", p.Policy, p.Record)
	if p.Percent != 100 {
		s += fmt.Sprintf(" (pct=%d)", p.Percent)
	}
	if p.Note != "" {
		s += " (" + p.Note + ")"
	}
	return s
}

// DMARCOptions configure DMARCPolicies. Zero values take the defaults.
type DMARCOptions struct {
	// Now is the clock of the cache; default time.Now.
	Now func() time.Time
	// NegativeTTL is how long "no record" is cached when the resolver
	// gives no TTL for it; default 5 minutes.
	NegativeTTL time.Duration
	// MaxTTL caps how long any answer is cached; default 24 hours.
	MaxTTL time.Duration
	// MaxEntries bounds the cache; default 10000. When it is full, expired
	// answers are dropped first, then arbitrary ones.
	MaxEntries int
	// Timeout bounds one policy lookup (up to two DNS questions); default
	// 10 seconds.
	Timeout time.Duration
}

// DMARCPolicies finds domains' DMARC policies through a resolver, caching
// every TXT answer, positive or negative, for its TTL. Temporary failures
// are not cached. It is safe for concurrent use.
type DMARCPolicies struct {
	resolver resolver.Resolver
	o        DMARCOptions

	mu    sync.Mutex
	cache map[string]txtAnswer // by query name, "_dmarc.<domain>"
}

// txtAnswer is one cached TXT answer; records is nil for "no such record"
// (NXDOMAIN or no TXT).
type txtAnswer struct {
	records []string
	expires time.Time
}

// NewDMARCPolicies returns a policy finder asking r.
func NewDMARCPolicies(r resolver.Resolver, o DMARCOptions) *DMARCPolicies {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = 5 * time.Minute
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = 24 * time.Hour
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 10000
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	return &DMARCPolicies{resolver: r, o: o, cache: map[string]txtAnswer{}}
}

// Policy returns the DMARC policy of the ASCII domain, by RFC 7489
// §6.6.3: the DMARC records at _dmarc.<domain>; when there are none, those
// at _dmarc.<organisational domain>; exactly one record must remain,
// else no policy applies. Its error wraps ErrDMARCTemporary when DNS could
// not answer.
func (p *DMARCPolicies) Policy(ctx context.Context, domain string) (DMARCPolicy, error) {
	ctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
	defer cancel()
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	res := DMARCPolicy{Domain: domain}
	records, err := p.records(ctx, "_dmarc."+domain)
	if err != nil {
		return res, err
	}
	at, org := "_dmarc."+domain, OrganizationalDomain(domain)
	if len(records) == 0 && org != domain {
		at = "_dmarc." + org
		if records, err = p.records(ctx, at); err != nil {
			return res, err
		}
	}
	switch len(records) {
	case 0:
		return res, nil
	case 1:
	default:
		// §6.6.3 step 5: several records, DMARC does not apply.
		res.Note = fmt.Sprintf("%d DMARC records at %s: none applies", len(records), at)
		return res, nil
	}
	res.Record, res.Percent = at, 100
	rec, perr := dmarc.Parse(records[0])
	if perr != nil {
		// The record has an error. Receivers differ in what they make of
		// it; a p or sp tag that is itself valid is honoured, so that a
		// typo elsewhere in a reject record does not get mail rejected.
		res.Policy, res.Note = lenientPolicy(records[0], at != "_dmarc."+domain), "record has errors: "+perr.Error()
		if res.Policy == "" {
			res.Policy = PolicyNone
		}
		return res, nil
	}
	res.Policy = string(rec.Policy)
	if at != "_dmarc."+domain && rec.SubdomainPolicy != "" {
		res.Policy = string(rec.SubdomainPolicy) // §6.3 sp
	}
	if rec.Percent != nil {
		res.Percent = *rec.Percent
	}
	return res, nil
}

// lenientPolicy extracts a valid p (or, for a sub-domain, sp) from a
// record that does not parse.
func lenientPolicy(txt string, subdomain bool) string {
	tags := map[string]string{}
	for part := range strings.SplitSeq(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		if ok {
			tags[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	valid := func(v string) bool { return v == PolicyNone || v == PolicyQuarantine || v == PolicyReject }
	if subdomain && valid(tags["sp"]) {
		return tags["sp"]
	}
	if valid(tags["p"]) {
		return tags["p"]
	}
	return ""
}

// records returns the DMARC records (those starting with v=DMARC1, RFC
// 7489 §6.6.3 steps 2 and 4) of the TXT records at name, from the cache
// or from DNS.
func (p *DMARCPolicies) records(ctx context.Context, name string) ([]string, error) {
	now := p.o.Now()
	p.mu.Lock()
	a, ok := p.cache[name]
	p.mu.Unlock()
	if !ok || !now.Before(a.expires) {
		txts, ttl, err := p.resolver.TXT(ctx, name)
		switch {
		case err == nil:
			a = txtAnswer{records: txts}
		case errors.Is(err, resolver.ErrNotFound):
			a = txtAnswer{}
			if ttl <= 0 {
				ttl = p.o.NegativeTTL
			}
		default:
			return nil, fmt.Errorf("%w: %v", ErrDMARCTemporary, err)
		}
		a.expires = now.Add(min(ttl, p.o.MaxTTL))
		if ttl > 0 {
			p.store(name, a, now)
		}
	}
	var out []string
	for _, txt := range a.records {
		if isDMARC1(txt) {
			out = append(out, txt)
		}
	}
	return out, nil
}

// isDMARC1 reports whether a TXT record starts with the tag v=DMARC1
// (RFC 7489 §6.4: the v tag comes first and its value matches exactly).
func isDMARC1(txt string) bool {
	first, _, _ := strings.Cut(txt, ";")
	k, v, ok := strings.Cut(first, "=")
	return ok && strings.TrimSpace(k) == "v" && strings.TrimSpace(v) == "DMARC1"
}

func (p *DMARCPolicies) store(name string, a txtAnswer, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.cache) >= p.o.MaxEntries {
		for k, e := range p.cache {
			if !now.Before(e.expires) {
				delete(p.cache, k)
			}
		}
		for k := range p.cache {
			if len(p.cache) < p.o.MaxEntries {
				break
			}
			delete(p.cache, k)
		}
	}
	p.cache[name] = a
}
