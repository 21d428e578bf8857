// Package domains answers the two questions about domain names that
// SPF, DKIM and DMARC need: a domain's organisational domain and whether
// two domains align.
package domains

import (
	"strings"

	"golang.org/x/net/publicsuffix"
)

// Organizational is the organisational domain of an ASCII domain (RFC
// 7489 §3.2): the public suffix plus one label, by the Public Suffix List.
// A domain that is itself a public suffix is its own.
func Organizational(domain string) string {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	org, err := publicsuffix.EffectiveTLDPlusOne(domain)
	if err != nil {
		return domain
	}
	return org
}

// Aligned reports whether an authenticated domain d aligns with the From
// domain: the same organisational domain in relaxed mode, the same domain
// in strict mode (RFC 7489 §3.1.1, §3.1.2).
func Aligned(d, from string, strict bool) bool {
	d, from = strings.ToLower(strings.TrimSuffix(d, ".")), strings.ToLower(strings.TrimSuffix(from, "."))
	if strict {
		return d == from
	}
	return Organizational(d) == Organizational(from)
}

// Of returns the domain of an address, lower-cased; "" when it has no '@'.
func Of(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(addr[at+1:])
}
