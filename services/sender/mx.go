package sender

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/resolver"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/emersion/go-smtp"
	"golang.org/x/net/idna"
)

// Resolver answers the DNS questions of direct-to-MX delivery. Its errors
// wrap resolver.ErrNotFound (a definitive "no such record") or
// resolver.ErrTemporary. *resolver.DNS implements it.
type Resolver interface {
	// MX returns name's MX records sorted by preference.
	MX(ctx context.Context, name string) ([]*net.MX, time.Duration, error)
	// IP returns name's addresses.
	IP(ctx context.Context, name string) ([]net.IP, time.Duration, error)
}

var _ Resolver = (*resolver.DNS)(nil)

// ErrNoResolver: a mail must go to its recipient's MX hosts and the
// sender has no DNS resolver (none given, and /etc/resolv.conf unusable).
var ErrNoResolver = errors.New("sender: direct-to-MX delivery needs a DNS resolver and none is configured")

// deliverMX delivers msg to the MX hosts of the recipient's domain (RFC
// 5321 §5.1): MX records by preference, equal preferences in random
// order; without MX records, the domain's own address (the implicit MX);
// a null MX (RFC 7505) refuses mail for good. Each host's addresses are
// tried in turn until one accepts a session; from then on its replies
// decide. The connection uses opportunistic STARTTLS without certificate
// verification (RFC 7435 §1.3, Postfix "may"). host names the host that
// answered, or the domain when none did.
func (s *Service) deliverMX(ctx context.Context, env *cmv1.Envelope, msg []byte, tr *transcript) (reply *cmv1.SMTPReply, host string, err error) {
	rcpt := env.GetRcptTo()
	at := strings.LastIndexByte(rcpt, '@')
	if at < 0 || at == len(rcpt)-1 {
		return nil, "", &refusal{fmt.Errorf("sender: recipient %q has no domain to look up MX hosts for", rcpt)}
	}
	domain, err := idna.Lookup.ToASCII(strings.ToLower(rcpt[at+1:]))
	if err != nil {
		return nil, rcpt[at+1:], &refusal{fmt.Errorf("sender: recipient domain %q: %v", rcpt[at+1:], err)}
	}
	if s.o.Resolver == nil {
		return nil, domain, ErrNoResolver
	}
	hosts, err := s.mxHosts(ctx, domain, tr)
	if err != nil {
		return nil, domain, err
	}
	var (
		last        error
		lastHost    = domain
		allNotFound = true
		port        = strconv.Itoa(s.o.MXPort)
	)
	for _, h := range hosts {
		ips, _, err := s.o.Resolver.IP(ctx, h)
		if err != nil {
			tr.note("no address for MX host %s: %v", h, err)
			if !errors.Is(err, resolver.ErrNotFound) {
				allNotFound = false
			}
			last, lastHost = fmt.Errorf("sender: address of MX host %s: %w", h, err), h
			continue
		}
		allNotFound = false
		for _, ip := range ips {
			tg := target{name: "mx", host: h, port: s.o.MXPort, tls: config.TLSOpportunistic, mx: true}
			reply, opened, err := s.deliverTo(ctx, tg, net.JoinHostPort(ip.String(), port), env, msg, tr)
			if opened {
				return reply, h, err
			}
			tr.note("%s [%s]: %v", h, ip, err)
			last, lastHost = err, h
		}
	}
	if allNotFound {
		// RFC 5321 §5.1: a domain whose mail exchangers have no address
		// cannot be reached; retrying will not change that.
		return nil, domain, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 4, 4},
			Message: fmt.Sprintf("(local) no address for any mail exchanger of %s", domain)}
	}
	return nil, lastHost, last
}

// mxHosts returns the hosts to try for domain, best first.
func (s *Service) mxHosts(ctx context.Context, domain string, tr *transcript) ([]string, error) {
	mxs, _, err := s.o.Resolver.MX(ctx, domain)
	switch {
	case errors.Is(err, resolver.ErrNotFound):
		// RFC 5321 §5.1: no MX records: the domain is its own implicit MX.
		tr.note("no MX records for %s; trying its own address (implicit MX, RFC 5321 §5.1)", domain)
		return []string{domain}, nil
	case err != nil:
		return nil, fmt.Errorf("sender: MX of %s: %w", domain, err)
	}
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		// RFC 7505 §3-§4.1: a null MX says the domain accepts no mail.
		tr.note("%s publishes a null MX (RFC 7505): it accepts no mail", domain)
		return nil, &smtp.SMTPError{Code: 556, EnhancedCode: smtp.EnhancedCode{5, 1, 10},
			Message: fmt.Sprintf("(local) recipient domain %s has a null MX (RFC 7505)", domain)}
	}
	ordered := orderMX(mxs)
	var hosts, desc []string
	for _, mx := range ordered {
		h := strings.TrimSuffix(strings.ToLower(mx.Host), ".")
		if h == "" {
			continue
		}
		hosts = append(hosts, h)
		desc = append(desc, fmt.Sprintf("%d %s", mx.Pref, h))
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("sender: MX of %s: %w: no usable host", domain, resolver.ErrNotFound)
	}
	tr.note("MX for %s: %s", domain, strings.Join(desc, ", "))
	return hosts, nil
}

// orderMX sorts MX records by preference and shuffles the records of
// equal preference (RFC 5321 §5.1), so that load spreads over them.
func orderMX(mxs []*net.MX) []*net.MX {
	out := append([]*net.MX(nil), mxs...)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	// A stable sort of a shuffled slice keeps equal preferences shuffled.
	slices.SortStableFunc(out, func(a, b *net.MX) int { return cmp.Compare(a.Pref, b.Pref) })
	return out
}
