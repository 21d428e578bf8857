package rewrite

import (
	"fmt"
	"slices"
	"strings"
)

// Warnings returns what in the tenant's configuration would make mail
// fail DMARC at receivers (RFC 7489 §3.1: the From domain must align with
// a passing DKIM signature or SPF envelope domain):
//
//   - a from_filter (or the default from filter) that lets authors of a
//     domain send with their own address while the tenant has no DKIM key
//     for that domain: only SPF can align then, and only when the envelope
//     is on the same domain;
//   - a notification address on a domain the tenant cannot sign for.
//
// The service logs them at start-up; "rewrite explain" prints them.
func (r *Rules) Warnings() []string {
	var out []string
	filters := map[string][]string{} // domain → where it is allowed
	for _, s := range r.servers {
		for _, d := range s.Filter.domains {
			filters[d] = append(filters[d], "from_filter of server "+s.Name)
		}
		for _, a := range s.Filter.addrs {
			d := a[strings.LastIndexByte(a, '@')+1:]
			filters[d] = append(filters[d], "from_filter of server "+s.Name)
		}
	}
	if len(r.servers) == 0 {
		for _, d := range r.defaultFilter.domains {
			filters[d] = append(filters[d], "default_from_filter")
		}
	}
	domains := make([]string, 0, len(filters))
	for d := range filters {
		domains = append(domains, d)
	}
	slices.Sort(domains)
	for _, d := range domains {
		if !r.CanSignFor(d) {
			out = append(out, fmt.Sprintf("tenant %s: %s sends authors of %s with their own address, but no DKIM key for %s is configured: their mail aligns with DMARC only through SPF; add a dkim key for %s",
				r.tenant, strings.Join(slices.Compact(filters[d]), ", "), d, d, d))
		}
	}
	if r.notification != "" {
		d := r.notification[strings.LastIndexByte(r.notification, '@')+1:]
		if !r.CanSignFor(d) {
			out = append(out, fmt.Sprintf("tenant %s: the notification address %s is on %s, for which no DKIM key is configured: notifications align with DMARC only through SPF; add a dkim key for %s",
				r.tenant, r.notification, d, d))
		}
	}
	return out
}
