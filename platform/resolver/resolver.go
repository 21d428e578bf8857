// Package resolver answers the DNS questions chattermail asks (DMARC and
// SPF TXT records, MX hosts, addresses) together with the answers' TTLs,
// so callers can cache them for exactly as long as the zone allows.
//
// Errors are classified once, here: ErrNotFound is a definitive "no such
// record" (NXDOMAIN, or NOERROR with no record of the type: RFC 2308 §1),
// ErrTemporary is everything that may succeed later (SERVFAIL, REFUSED,
// timeouts, network errors). Callers never retry on ErrNotFound and never
// treat ErrTemporary as an answer.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Resolver answers the lookups chattermail needs. Implementations are safe
// for concurrent use.
type Resolver interface {
	// TXT returns one string per TXT record of name (the record's strings
	// joined, RFC 7208 §3.3) and the answer's TTL.
	TXT(ctx context.Context, name string) ([]string, time.Duration, error)
	// MX returns name's MX records, sorted by preference, and the TTL.
	MX(ctx context.Context, name string) ([]*net.MX, time.Duration, error)
	// IP returns name's A and AAAA addresses and the smaller TTL.
	IP(ctx context.Context, name string) ([]net.IP, time.Duration, error)
}

var (
	// ErrNotFound means the name or the record type does not exist.
	ErrNotFound = errors.New("resolver: no such record")
	// ErrTemporary means the question could not be answered now.
	ErrTemporary = errors.New("resolver: temporary failure")
)

// DNS is a Resolver that asks recursive servers over UDP, falling back to
// TCP for truncated answers.
type DNS struct {
	servers []string
	udp     *dns.Client
	tcp     *dns.Client
}

var _ Resolver = (*DNS)(nil)

// New returns a resolver asking servers ("host:port", tried in order) with
// timeout per query (default 5s).
func New(servers []string, timeout time.Duration) *DNS {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &DNS{
		servers: servers,
		udp:     &dns.Client{Net: "udp", Timeout: timeout, UDPSize: 4096},
		tcp:     &dns.Client{Net: "tcp", Timeout: timeout},
	}
}

// FromSystem returns a resolver using the servers of /etc/resolv.conf.
func FromSystem() (*DNS, error) {
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil, fmt.Errorf("resolver: %w", err)
	}
	var servers []string
	for _, s := range cc.Servers {
		servers = append(servers, net.JoinHostPort(s, cc.Port))
	}
	if len(servers) == 0 {
		return nil, errors.New("resolver: /etc/resolv.conf lists no nameserver")
	}
	return New(servers, time.Duration(cc.Timeout)*time.Second), nil
}

// TXT implements Resolver.
func (r *DNS) TXT(ctx context.Context, name string) ([]string, time.Duration, error) {
	rrs, ttl, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, 0, err
	}
	var out []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	if len(out) == 0 {
		return nil, ttl, fmt.Errorf("%w: TXT %s", ErrNotFound, name)
	}
	return out, ttl, nil
}

// MX implements Resolver.
func (r *DNS) MX(ctx context.Context, name string) ([]*net.MX, time.Duration, error) {
	rrs, ttl, err := r.query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, 0, err
	}
	var out []*net.MX
	for _, rr := range rrs {
		if m, ok := rr.(*dns.MX); ok {
			out = append(out, &net.MX{Host: m.Mx, Pref: m.Preference})
		}
	}
	if len(out) == 0 {
		return nil, ttl, fmt.Errorf("%w: MX %s", ErrNotFound, name)
	}
	slices.SortStableFunc(out, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	return out, ttl, nil
}

// IP implements Resolver.
func (r *DNS) IP(ctx context.Context, name string) ([]net.IP, time.Duration, error) {
	var (
		out     []net.IP
		ttl     time.Duration
		lastErr error
	)
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, t, err := r.query(ctx, name, qt)
		if err != nil {
			if errors.Is(err, ErrTemporary) {
				return nil, 0, err
			}
			lastErr = err
			continue
		}
		for _, rr := range rrs {
			switch a := rr.(type) {
			case *dns.A:
				out = append(out, a.A)
			case *dns.AAAA:
				out = append(out, a.AAAA)
			}
		}
		if ttl == 0 || t < ttl {
			ttl = t
		}
	}
	if len(out) == 0 {
		if lastErr == nil {
			lastErr = fmt.Errorf("%w: A/AAAA %s", ErrNotFound, name)
		}
		return nil, 0, lastErr
	}
	return out, ttl, nil
}

// query asks each server in turn and returns the answer section's records
// of type qtype with their smallest TTL. For an empty answer the TTL is
// the negative-caching TTL of the SOA in the authority section (RFC 2308 §5).
func (r *DNS) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, time.Duration, error) {
	if len(r.servers) == 0 {
		return nil, 0, fmt.Errorf("%w: no DNS servers configured", ErrTemporary)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(4096, false)
	var lastErr error
	for _, srv := range r.servers {
		in, _, err := r.udp.ExchangeContext(ctx, m, srv)
		if err == nil && in.Truncated {
			in, _, err = r.tcp.ExchangeContext(ctx, m, srv)
		}
		if err != nil {
			lastErr = fmt.Errorf("%w: %s %s via %s: %v", ErrTemporary, dns.TypeToString[qtype], name, srv, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		switch in.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			return nil, negativeTTL(in), fmt.Errorf("%w: %s %s (NXDOMAIN)", ErrNotFound, dns.TypeToString[qtype], name)
		default:
			lastErr = fmt.Errorf("%w: %s %s via %s: %s", ErrTemporary, dns.TypeToString[qtype], name, srv, dns.RcodeToString[in.Rcode])
			continue
		}
		var rrs []dns.RR
		var ttl uint32
		for _, rr := range in.Answer {
			if rr.Header().Rrtype != qtype {
				continue // CNAME chain records; the target's records follow
			}
			rrs = append(rrs, rr)
			if ttl == 0 || rr.Header().Ttl < ttl {
				ttl = rr.Header().Ttl
			}
		}
		if len(rrs) == 0 {
			return nil, negativeTTL(in), fmt.Errorf("%w: %s %s (no data)", ErrNotFound, dns.TypeToString[qtype], name)
		}
		return rrs, time.Duration(ttl) * time.Second, nil
	}
	return nil, 0, lastErr
}

// negativeTTL is min(SOA TTL, SOA MINIMUM) of a negative answer (RFC 2308 §5).
func negativeTTL(m *dns.Msg) time.Duration {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}

// FromList returns a resolver for a comma-separated list of DNS servers
// ("host" or "host:port", port 53 by default), as given in a -dns flag or
// DNS_SERVERS; an empty list means the servers of /etc/resolv.conf.
func FromList(servers string, timeout time.Duration) (*DNS, error) {
	if strings.TrimSpace(servers) == "" {
		return FromSystem()
	}
	var list []string
	for s := range strings.SplitSeq(servers, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(s, "53")
		}
		list = append(list, s)
	}
	return New(list, timeout), nil
}
