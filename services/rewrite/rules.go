package rewrite

import (
	"fmt"
	"slices"
	"strings"

	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// Rules are one tenant's From rules, compiled from its configuration
// (mail-rules §1): the derived addresses in matching form, the servers in
// sequence order with parsed filters, the default from filter and the
// domains the tenant can sign for. Rules are immutable and safe for
// concurrent use.
type Rules struct {
	tenant      string
	aliasDomain string
	// notification is "" when the tenant has no notification address (no
	// alias domain and a default from without '@').
	notification, notificationNorm string
	// bounce is "" when the tenant has no alias domain.
	bounce, bounceNorm string
	catchall           string
	defaultFilter      FromFilter
	servers            []ServerRule
	// signFor are the ASCII domains of the tenant's DKIM keys.
	signFor []string
	// aliasOrg is the organisational domain of the alias domain.
	aliasOrg string
	verp     bool
}

// ServerRule is an outgoing server as the rules see it.
type ServerRule struct {
	// Name is the server's name in the tenants file.
	Name string
	// Filter is its from_filter.
	Filter FromFilter
}

// CompileTenant compiles t's rules. A tenant loaded by config.Load is
// already valid; CompileTenant checks again what the rules rely on, so a
// tenant built in code fails here, at start-up, with the key named. A
// tenant without alias domain (possible only in code) has no bounce or
// catchall address, and a notification address only when default_from is
// a full address, as in Odoo without mail.catchall.domain (§10 #11).
func CompileTenant(t *config.Tenant) (*Rules, error) {
	wrap := func(key string, err error) error {
		return fmt.Errorf("rewrite: tenant %q: %s: %w", t.ID, key, err)
	}
	r := &Rules{tenant: t.ID, aliasDomain: strings.ToLower(t.AliasDomain), verp: t.VERPEnabled()}
	if r.aliasDomain != "" {
		a, err := asciiDomain(r.aliasDomain)
		if err != nil || a != r.aliasDomain {
			return nil, wrap("alias_domain", fmt.Errorf("%q must be an ASCII domain name", t.AliasDomain))
		}
		r.aliasOrg = OrganizationalDomain(r.aliasDomain)
	}
	defaultFrom := t.DefaultFrom
	if defaultFrom == "" {
		defaultFrom = config.DefaultFrom
	}
	switch {
	case strings.Contains(defaultFrom, "@"):
		r.notification = defaultFrom
	case r.aliasDomain != "":
		r.notification = defaultFrom + "@" + r.aliasDomain
	}
	if r.notification != "" {
		a, err := ParseAuthor("", r.notification)
		if err != nil || a.Address != r.notification || a.Name != "" {
			return nil, wrap("default_from", fmt.Errorf("%q is neither a local part nor a plain address", t.DefaultFrom))
		}
		r.notificationNorm = a.Norm
	}
	if r.aliasDomain != "" {
		bounce := cmpOr(t.BounceAlias, config.DefaultBounceAlias) + "@" + r.aliasDomain
		a, err := ParseAuthor("", bounce)
		if err != nil || a.Address != bounce {
			return nil, wrap("bounce_alias", fmt.Errorf("%q is not a local part", t.BounceAlias))
		}
		r.bounce, r.bounceNorm = bounce, a.Norm
		r.catchall = cmpOr(t.CatchallAlias, config.DefaultCatchallAlias) + "@" + r.aliasDomain
	}
	var err error
	if r.defaultFilter, err = ParseFromFilter(t.DefaultFromFilter); err != nil {
		return nil, wrap("default_from_filter", err)
	}
	servers := slices.Clone(t.Servers)
	slices.SortStableFunc(servers, func(a, b *config.Server) int { return a.Sequence - b.Sequence })
	for i, s := range servers {
		f, err := ParseFromFilter(s.FromFilter)
		if err != nil {
			return nil, wrap(fmt.Sprintf("servers[%d] (%s): from_filter", i, s.Name), err)
		}
		r.servers = append(r.servers, ServerRule{Name: s.Name, Filter: f})
	}
	for i, k := range t.DKIM {
		a, err := asciiDomain(k.Domain)
		if err != nil {
			return nil, wrap(fmt.Sprintf("dkim[%d].domain", i), err)
		}
		r.signFor = append(r.signFor, a)
	}
	return r, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Tenant is the tenant id.
func (r *Rules) Tenant() string { return r.tenant }

// NotificationAddress is the notification address, "" when there is none.
func (r *Rules) NotificationAddress() string { return r.notification }

// BounceAddress is the bounce address, "" without alias domain.
func (r *Rules) BounceAddress() string { return r.bounce }

// CanSignFor reports whether the tenant can sign for the ASCII domain: a
// DKIM key for it, or for its organisational domain, is configured
// (mail-rules §1).
func (r *Rules) CanSignFor(domain string) bool {
	domain = strings.ToLower(domain)
	org := OrganizationalDomain(domain)
	return slices.ContainsFunc(r.signFor, func(d string) bool { return d == domain || d == org })
}

// choice is the outcome of the server and From rules of §3, before the
// DMARC check.
type choice struct {
	step cmv1.FromStep
	// server is nil for the tenant's default delivery (no servers).
	server *ServerRule
	// asAuthor: send with the author's own address; else the notification
	// address.
	asAuthor bool
	// why explains the choice to an operator.
	why     string
	warning string
}

// serverName is the chosen server's name, "" for the default delivery.
func (c choice) serverName() string {
	if c.server == nil {
		return ""
	}
	return c.server.Name
}

// filter is the from filter the envelope rule checks: the chosen server's,
// or the default from filter when the tenant has no servers (§4).
func (r *Rules) filter(c choice) FromFilter {
	if c.server == nil {
		return r.defaultFilter
	}
	return c.server.Filter
}

// choose applies mail-rules §3 to author a, first hit wins.
func (r *Rules) choose(a Author) choice {
	if len(r.servers) == 0 {
		return r.chooseDefault(a, "")
	}
	// Step 1: the author's exact address, in any server, beats its domain.
	if s := r.serverWith(func(f FromFilter) bool { return f.HasAddress(a.Norm) }); s != nil {
		return choice{step: cmv1.FromStep_FROM_STEP_AUTHOR_ADDRESS, server: s, asAuthor: true,
			why: fmt.Sprintf("server %s's from_filter lists the author's address %s: sent as the author", s.Name, a.Norm)}
	}
	if s := r.serverWith(func(f FromFilter) bool { return f.HasDomain(a.Domain) }); s != nil {
		return choice{step: cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, server: s, asAuthor: true,
			why: fmt.Sprintf("server %s's from_filter lists the author's domain %s: sent as the author", s.Name, a.Domain)}
	}
	return r.chooseNotification(a, fmt.Sprintf("no server's from_filter lists the author %s or its domain", a.Norm))
}

// chooseNotification applies steps 2 to 4 of §3: the server for sending as
// the notification address. prefix says why the author was not kept.
func (r *Rules) chooseNotification(a Author, prefix string) choice {
	if len(r.servers) == 0 {
		return r.chooseDefault(a, prefix)
	}
	if r.notification != "" {
		// Step 2, the same two passes with the notification address.
		if s := r.serverWith(func(f FromFilter) bool { return f.HasAddress(r.notificationNorm) }); s != nil {
			return choice{step: cmv1.FromStep_FROM_STEP_NOTIFICATION_ADDRESS, server: s,
				why: fmt.Sprintf("%s; server %s's from_filter lists the notification address %s: sent as the notification address", prefix, s.Name, r.notification)}
		}
		domain := r.notificationNorm[strings.LastIndexByte(r.notificationNorm, '@')+1:]
		if s := r.serverWith(func(f FromFilter) bool { return f.HasDomain(domain) }); s != nil {
			return choice{step: cmv1.FromStep_FROM_STEP_NOTIFICATION_DOMAIN, server: s,
				why: fmt.Sprintf("%s; server %s's from_filter lists the notification domain %s: sent as the notification address", prefix, s.Name, domain)}
		}
		prefix += fmt.Sprintf("; none lists the notification address %s or its domain either", r.notification)
	}
	as := "sent as the notification address"
	if r.notification == "" {
		as = "there is no notification address: sent as the author"
	}
	// Step 3: the first server without filter.
	if s := r.serverWith(FromFilter.Empty); s != nil {
		return choice{step: cmv1.FromStep_FROM_STEP_SERVER_WITHOUT_FILTER, server: s, asAuthor: r.notification == "",
			why: fmt.Sprintf("%s; server %s is the first without from_filter: %s", prefix, s.Name, as)}
	}
	// Step 4: the first server anyway.
	s := &r.servers[0]
	return choice{step: cmv1.FromStep_FROM_STEP_FIRST_SERVER, server: s, asAuthor: r.notification == "",
		why:     fmt.Sprintf("%s; every server has a from_filter: the first server %s is used anyway: %s", prefix, s.Name, as),
		warning: fmt.Sprintf("no server matches %s or the notification address; using the first server %s anyway", a.Norm, s.Name)}
}

// chooseDefault applies step 5 of §3: no servers, the tenant's default
// from filter. A non-empty prefix (why the author cannot be kept: DMARC
// mitigation) skips the author.
func (r *Rules) chooseDefault(a Author, prefix string) choice {
	f := r.defaultFilter
	desc := fmt.Sprintf("no outgoing servers; the default from filter %q", f.String())
	if f.Empty() {
		desc = "no outgoing servers; the default from filter (empty: matches every address)"
	}
	if prefix != "" {
		desc = prefix + "; " + desc
	}
	if prefix == "" && f.Matches(a.Norm) {
		return choice{step: cmv1.FromStep_FROM_STEP_DEFAULT_FILTER_AUTHOR, asAuthor: true,
			why: fmt.Sprintf("%s matches the author %s: sent as the author", desc, a.Norm)}
	}
	if r.notification != "" && f.Matches(r.notificationNorm) {
		return choice{step: cmv1.FromStep_FROM_STEP_DEFAULT_FILTER_NOTIFICATION,
			why: fmt.Sprintf("%s matches the notification address %s: sent as the notification address", desc, r.notification)}
	}
	c := choice{step: cmv1.FromStep_FROM_STEP_DEFAULT_FILTER_FALLBACK, asAuthor: r.notification == "",
		why:     fmt.Sprintf("%s matches neither the author nor the notification address: sent as the notification address anyway", desc),
		warning: fmt.Sprintf("the default from filter %q matches neither %s nor the notification address", f.String(), a.Norm)}
	if r.notification == "" {
		c.why = fmt.Sprintf("%s does not match the author and there is no notification address: sent as the author", desc)
	}
	return c
}

// serverWith returns the first server, in sequence order, whose filter
// satisfies match.
func (r *Rules) serverWith(match func(FromFilter) bool) *ServerRule {
	for i := range r.servers {
		if match(r.servers[i].Filter) {
			return &r.servers[i]
		}
	}
	return nil
}
