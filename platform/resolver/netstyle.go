package resolver

import (
	"context"
	"errors"
	"net"
)

// NetStyle adapts a Resolver to the lookup methods of *net.Resolver, which
// libraries such as blitiri.com.ar/go/spf accept: ErrNotFound becomes a
// *net.DNSError with IsNotFound, ErrTemporary one with IsTemporary.
type NetStyle struct{ R Resolver }

func dnsError(name string, err error) error {
	return &net.DNSError{Err: err.Error(), Name: name,
		IsNotFound: errors.Is(err, ErrNotFound), IsTemporary: errors.Is(err, ErrTemporary)}
}

// LookupTXT returns name's TXT records.
func (n NetStyle) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txt, _, err := n.R.TXT(ctx, name)
	if err != nil {
		return nil, dnsError(name, err)
	}
	return txt, nil
}

// LookupMX returns name's MX records, by preference.
func (n NetStyle) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mx, _, err := n.R.MX(ctx, name)
	if err != nil {
		return nil, dnsError(name, err)
	}
	return mx, nil
}

// LookupIPAddr returns host's addresses.
func (n NetStyle) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, _, err := n.R.IP(ctx, host)
	if err != nil {
		return nil, dnsError(host, err)
	}
	out := make([]net.IPAddr, len(ips))
	for i, ip := range ips {
		out[i] = net.IPAddr{IP: ip}
	}
	return out, nil
}

// LookupAddr answers reverse (PTR) questions with "not found": SPF's ptr
// mechanism is deprecated (RFC 7208 §5.5) and chattermail never needs it.
func (n NetStyle) LookupAddr(_ context.Context, addr string) ([]string, error) {
	return nil, &net.DNSError{Err: "reverse lookups are not supported", Name: addr, IsNotFound: true}
}
