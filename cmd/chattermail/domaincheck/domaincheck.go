// Package domaincheck checks that a tenant's DNS lets its mail through:
// one SPF record that authorises every sending host (RFC 7208), the DKIM
// record of every configured key (RFC 6376), a DMARC policy the mail will
// align with (RFC 7489), and an MX for the alias domain so replies arrive.
// Every problem comes with the record to publish or change.
package domaincheck

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/dkimkey"
	"github.com/chattermail/chattermail/platform/domains"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/emersion/go-msgauth/dmarc"
)

// Status is a check's verdict.
type Status string

// Verdicts, from best to worst.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check of one name.
type Result struct {
	// Check is spf, dkim, dmarc or mx.
	Check string `json:"check"`
	// Name is the DNS name that was checked.
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Detail says what was found.
	Detail string `json:"detail"`
	// Fix says what to publish or change; empty when nothing is needed.
	Fix string `json:"fix,omitempty"`
}

// Report is every check of one tenant.
type Report struct {
	Tenant  string   `json:"tenant"`
	Results []Result `json:"results"`
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool {
	return slices.ContainsFunc(r.Results, func(x Result) bool { return x.Status == Fail })
}

func (r *Report) add(check, name string, st Status, detail, fix string) {
	r.Results = append(r.Results, Result{Check: check, Name: name, Status: st, Detail: detail, Fix: fix})
}

// Identity is what a tenant's notifications carry: the From address and
// the envelope sender (MAIL FROM), as the rewrite rules decide them.
type Identity struct {
	From         string
	EnvelopeFrom string
}

// Checker runs the checks.
type Checker struct {
	// DNS answers every lookup.
	DNS resolver.Resolver
	// SendingIPs are the addresses mail leaves from when a tenant has no
	// outgoing server (direct delivery).
	SendingIPs []net.IP
	// SPFInclude, when set, is the mechanism suggested for a missing
	// authorisation (for example "include:_spf.provider.net"); by default
	// the sending addresses are suggested as ip4:/ip6: mechanisms.
	SPFInclude string
	// Identity returns the identity of a tenant's notifications; default:
	// From the notification address, envelope the bounce address.
	Identity func(t *config.Tenant) Identity
}

// Tenant checks tenant t.
func (c *Checker) Tenant(ctx context.Context, t *config.Tenant) *Report {
	r := &Report{Tenant: t.ID}
	id := Identity{From: t.NotificationAddress(), EnvelopeFrom: t.BounceAddress()}
	if c.Identity != nil {
		id = c.Identity(t)
	}
	spfOK := c.checkSPF(ctx, r, t, id)
	dkimDomains := c.checkDKIM(ctx, r, t)
	c.checkDMARC(ctx, r, id, spfOK, dkimDomains)
	c.checkMX(ctx, r, t)
	return r
}

// hosts returns the sending hosts: each server's address, else SendingIPs.
func (c *Checker) hosts(ctx context.Context, t *config.Tenant) (map[string][]net.IP, error) {
	out := map[string][]net.IP{}
	for _, s := range t.Servers {
		if ip := net.ParseIP(s.Host); ip != nil {
			out[s.Host] = []net.IP{ip}
			continue
		}
		ips, _, err := c.DNS.IP(ctx, s.Host)
		if err != nil {
			return nil, fmt.Errorf("server %s (%s): %w", s.Name, s.Host, err)
		}
		out[s.Host] = ips
	}
	if len(t.Servers) == 0 && len(c.SendingIPs) > 0 {
		out["this host"] = c.SendingIPs
	}
	return out, nil
}

// checkSPF checks the envelope domain's SPF record (RFC 7208): exactly one
// record (§3.2), at most 10 lookups (§4.6.4), and a pass for every sending
// address. It reports whether SPF passes for all of them.
func (c *Checker) checkSPF(ctx context.Context, r *Report, t *config.Tenant, id Identity) bool {
	domain := domains.Of(id.EnvelopeFrom)
	txts, _, err := c.DNS.TXT(ctx, domain)
	if err != nil && !errors.Is(err, resolver.ErrNotFound) {
		r.add("spf", domain, Fail, "lookup failed: "+err.Error(), "check that the domain's name servers answer")
		return false
	}
	var records []string
	for _, txt := range txts {
		if strings.HasPrefix(strings.ToLower(txt), "v=spf1 ") || strings.EqualFold(txt, "v=spf1") {
			records = append(records, txt)
		}
	}
	hosts, err := c.hosts(ctx, t)
	if err != nil {
		r.add("spf", domain, Fail, "cannot resolve a sending host: "+err.Error(), "fix the server's host name")
		return false
	}
	mechs := c.mechanisms(hosts)
	switch {
	case len(records) == 0:
		r.add("spf", domain, Fail, "no SPF record", "publish: "+domain+". IN TXT \""+mergeSPF("", mechs)+"\"")
		return false
	case len(records) > 1:
		r.add("spf", domain, Fail, fmt.Sprintf("%d SPF records; receivers treat that as an error (RFC 7208 §3.2)", len(records)),
			"replace them with one: "+domain+". IN TXT \""+mergeSPF(strings.Join(records, " "), mechs)+"\"")
		return false
	}
	if len(hosts) == 0 {
		r.add("spf", domain, Warn, "record found, but no sending host is known (no servers and no --ip)", "pass the sending addresses with --ip")
		return false
	}
	allPass := true
	var failed []string
	for name, ips := range hosts {
		for _, ip := range ips {
			res, err := spf.CheckHostWithSender(ip, name, id.EnvelopeFrom,
				spf.WithResolver(resolver.NetStyle{R: c.DNS}), spf.WithContext(ctx))
			if errors.Is(err, spf.ErrLookupLimitReached) {
				r.add("spf", domain, Fail, "the record needs more than 10 DNS lookups (RFC 7208 §4.6.4)",
					"flatten includes into ip4:/ip6: mechanisms or drop unused ones")
				return false
			}
			if res != spf.Pass {
				allPass = false
				failed = append(failed, fmt.Sprintf("%s (%s): %s", name, ip, res))
			}
		}
	}
	if !allPass {
		slices.Sort(failed)
		r.add("spf", domain, Fail, "record does not authorise "+strings.Join(failed, ", "),
			"change it to: "+domain+". IN TXT \""+mergeSPF(records[0], mechs)+"\"")
		return false
	}
	r.add("spf", domain, OK, records[0], "")
	return true
}

// mechanisms are what authorises hosts: SPFInclude, else ip4:/ip6:.
func (c *Checker) mechanisms(hosts map[string][]net.IP) []string {
	if c.SPFInclude != "" {
		return []string{c.SPFInclude}
	}
	var out []string
	for _, ips := range hosts {
		for _, ip := range ips {
			if ip.To4() != nil {
				out = append(out, "ip4:"+ip.String())
			} else {
				out = append(out, "ip6:"+ip.String())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// mergeSPF puts mechs in front of the mechanisms of existing (one or more
// records' text), keeps each once, and ends with the existing "all" (or
// ~all), as in "v=spf1 include:_spf.new include:_spf.existing ~all".
func mergeSPF(existing string, mechs []string) string {
	terms := []string{"v=spf1"}
	seen := map[string]bool{"v=spf1": true}
	all := "~all"
	add := func(m string) {
		if !seen[strings.ToLower(m)] {
			seen[strings.ToLower(m)] = true
			terms = append(terms, m)
		}
	}
	for _, m := range mechs {
		add(m)
	}
	for _, f := range strings.Fields(existing) {
		switch lf := strings.ToLower(f); {
		case lf == "v=spf1":
		case strings.HasSuffix(lf, "all") && len(lf) <= 4:
			all = f
		default:
			add(f)
		}
	}
	return strings.Join(append(terms, all), " ")
}

// checkDKIM checks each configured key's record at
// <selector>._domainkey.<domain>, directly or through a CNAME, and returns
// the domains whose key is published correctly.
func (c *Checker) checkDKIM(ctx context.Context, r *Report, t *config.Tenant) []string {
	if len(t.DKIM) == 0 {
		r.add("dkim", t.AliasDomain, Warn, "no DKIM key configured; mail goes out unsigned",
			"chattermail dkim keygen --domain "+t.AliasDomain+" --out keys/, then add the key to the tenant")
		return nil
	}
	var good []string
	for _, k := range t.DKIM {
		name := k.Selector + "._domainkey." + k.Domain
		key, err := dkimkey.Load(k.KeyFile)
		if err != nil {
			r.add("dkim", name, Fail, "cannot read the private key: "+err.Error(), "fix key_file")
			continue
		}
		want, err := dkimkey.Record(key.Public())
		if err != nil {
			r.add("dkim", name, Fail, err.Error(), "use an RSA or Ed25519 key")
			continue
		}
		txts, _, err := c.DNS.TXT(ctx, name)
		if err != nil {
			st := Fail
			r.add("dkim", name, st, "no DKIM record: "+err.Error(), "publish: "+dkimkey.ZoneLines(name+".", want))
			continue
		}
		if !slices.ContainsFunc(txts, func(s string) bool { return dkimkey.PublicKeyOf(s) == dkimkey.PublicKeyOf(want) }) {
			r.add("dkim", name, Fail, "the published record holds another key than "+k.KeyFile,
				"publish: "+dkimkey.ZoneLines(name+".", want))
			continue
		}
		r.add("dkim", name, OK, "record matches "+k.KeyFile+keyKind(key), "")
		good = append(good, k.Domain)
	}
	return good
}

func keyKind(k crypto.Signer) string {
	rec, _ := dkimkey.Record(k.Public())
	if strings.Contains(rec, "k=ed25519") {
		return " (ed25519)"
	}
	return " (rsa)"
}

// checkDMARC looks up the From domain's DMARC record (with the
// organisational-domain fallback of RFC 7489 §6.6.3) and checks that the
// notifications align through SPF or DKIM (relaxed alignment, §3.1).
func (c *Checker) checkDMARC(ctx context.Context, r *Report, id Identity, spfOK bool, dkimDomains []string) {
	from := domains.Of(id.From)
	rec, name, err := c.lookupDMARC(ctx, from)
	org := domains.Organizational(from)
	spfAligned := spfOK && domains.Organizational(domains.Of(id.EnvelopeFrom)) == org
	dkimAligned := slices.ContainsFunc(dkimDomains, func(d string) bool { return domains.Organizational(d) == org })
	aligned := spfAligned || dkimAligned
	how := alignment(spfAligned, dkimAligned)
	switch {
	case errors.Is(err, resolver.ErrNotFound):
		r.add("dmarc", "_dmarc."+from, Warn, "no DMARC record; receivers apply their own policy; "+how,
			"publish: _dmarc."+from+". IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@"+from+"\" and tighten to quarantine once reports are clean")
	case err != nil:
		r.add("dmarc", "_dmarc."+from, Fail, err.Error(), "fix the record or the domain's name servers")
	case rec.Policy != dmarc.PolicyNone && !aligned:
		r.add("dmarc", name, Fail, fmt.Sprintf("policy %s, but notifications from %s align through neither SPF (envelope %s) nor DKIM", rec.Policy, id.From, id.EnvelopeFrom),
			"add a DKIM key for "+from+" (chattermail dkim keygen) or make the envelope domain "+from)
	case !aligned:
		r.add("dmarc", name, Warn, fmt.Sprintf("policy %s; notifications do not align yet (%s)", rec.Policy, how),
			"add a DKIM key for "+from+" before raising the policy")
	default:
		r.add("dmarc", name, OK, fmt.Sprintf("policy %s; %s", rec.Policy, how), "")
	}
}

func alignment(spfAligned, dkimAligned bool) string {
	switch {
	case spfAligned && dkimAligned:
		return "aligned through SPF and DKIM"
	case spfAligned:
		return "aligned through SPF only"
	case dkimAligned:
		return "aligned through DKIM only"
	}
	return "aligned through neither SPF nor DKIM"
}

func (c *Checker) lookupDMARC(ctx context.Context, domain string) (*dmarc.Record, string, error) {
	names := []string{"_dmarc." + domain}
	if org := domains.Organizational(domain); org != domain {
		names = append(names, "_dmarc."+org)
	}
	var lastErr error
	for _, name := range names {
		txts, _, err := c.DNS.TXT(ctx, name)
		if err != nil {
			lastErr = err
			if errors.Is(err, resolver.ErrNotFound) {
				continue
			}
			return nil, name, err
		}
		var recs []string
		for _, t := range txts {
			if strings.HasPrefix(t, "v=DMARC1") {
				recs = append(recs, t)
			}
		}
		if len(recs) != 1 {
			lastErr = fmt.Errorf("%w: %d DMARC records at %s", resolver.ErrNotFound, len(recs), name)
			continue
		}
		rec, err := dmarc.Parse(recs[0])
		if err != nil {
			return nil, name, fmt.Errorf("invalid DMARC record at %s: %v", name, err)
		}
		return rec, name, nil
	}
	return nil, "", lastErr
}

// checkMX checks that the alias domain receives mail, so replies and
// bounces reach the inbound server.
func (c *Checker) checkMX(ctx context.Context, r *Report, t *config.Tenant) {
	mx, _, err := c.DNS.MX(ctx, t.AliasDomain)
	switch {
	case errors.Is(err, resolver.ErrNotFound):
		r.add("mx", t.AliasDomain, Fail, "no MX record: replies and bounces cannot arrive",
			"publish: "+t.AliasDomain+". IN MX 10 <the host running chattermail's inbound SMTP>.")
	case err != nil:
		r.add("mx", t.AliasDomain, Fail, err.Error(), "check that the domain's name servers answer")
	case len(mx) == 1 && mx[0].Host == ".":
		r.add("mx", t.AliasDomain, Fail, "null MX (RFC 7505): the domain refuses all mail", "publish a real MX")
	default:
		var hosts []string
		for _, m := range mx {
			hosts = append(hosts, fmt.Sprintf("%d %s", m.Pref, m.Host))
		}
		r.add("mx", t.AliasDomain, OK, strings.Join(hosts, ", "), "")
	}
}
