package rewrite

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/testenv"
)

// clock is an injected clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// dnsPolicies starts a DNS server with records and returns policies asking
// it, on clock c.
func dnsPolicies(t *testing.T, c *clock, records ...string) (*DMARCPolicies, *testenv.DNSServer) {
	t.Helper()
	srv := testenv.DNS(t, records...)
	return NewDMARCPolicies(resolver.New([]string{srv.Addr()}, 300*time.Millisecond), DMARCOptions{Now: c.Now}), srv
}

// TestDMARCPolicyFromDNS looks policies up from a real DNS server.
func TestDMARCPolicyFromDNS(t *testing.T) {
	p, _ := dnsPolicies(t, newClock(),
		`_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject; rua=mailto:d@reject.example"`,
		`_dmarc.quarantine.example. 300 IN TXT "v=DMARC1; p=quarantine; pct=50"`,
		`_dmarc.none.example. 300 IN TXT "v=DMARC1; p=none"`,
		// An organisational domain with a record, sub-domains without.
		`_dmarc.example.co.uk. 300 IN TXT "v=DMARC1; p=reject; sp=quarantine"`,
		`_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"`,
		// Not DMARC records, or too many of them.
		`_dmarc.spf-only.example. 300 IN TXT "v=spf1 -all"`,
		`_dmarc.two.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.two.example. 300 IN TXT "v=DMARC1; p=none"`,
		// A record split in two strings, and one with an error beside p.
		`_dmarc.split.example. 300 IN TXT "v=DMARC1; " "p=reject"`,
		`_dmarc.typo.example. 300 IN TXT "v=DMARC1; p=reject; ri=soon"`,
		`_dmarc.lower.example. 300 IN TXT "v=dmarc1; p=reject"`,
	)
	tests := []struct {
		domain, wantPolicy, wantRecord string
		wantPct                        int
	}{
		{"reject.example", PolicyReject, "_dmarc.reject.example", 100},
		{"quarantine.example", PolicyQuarantine, "_dmarc.quarantine.example", 50},
		{"none.example", PolicyNone, "_dmarc.none.example", 100},
		{"mail.example.co.uk", PolicyQuarantine, "_dmarc.example.co.uk", 100}, // sp applies to sub-domains
		{"example.co.uk", PolicyReject, "_dmarc.example.co.uk", 100},
		{"a.b.example.org", PolicyReject, "_dmarc.example.org", 100}, // no sp: p
		{"missing.example", "", "", 0},
		{"spf-only.example", "", "", 0},
		{"two.example", "", "", 0}, // RFC 7489 §6.6.3 step 5
		{"split.example", PolicyReject, "_dmarc.split.example", 100},
		{"typo.example", PolicyReject, "_dmarc.typo.example", 100},
		{"lower.example", "", "", 0},
	}
	for _, tt := range tests {
		got, err := p.Policy(context.Background(), tt.domain)
		if err != nil || got.Policy != tt.wantPolicy || got.Record != tt.wantRecord || got.Percent != tt.wantPct {
			t.Errorf("Policy(%s) = %+v, %v, want policy %q at %q pct %d", tt.domain, got, err, tt.wantPolicy, tt.wantRecord, tt.wantPct)
		}
	}
}

func TestDMARCTemporaryFailures(t *testing.T) {
	p, srv := dnsPolicies(t, newClock(), `_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"`)
	srv.Fail("_dmarc.servfail.example")
	srv.Drop("_dmarc.timeout.example")
	srv.Fail("_dmarc.example.org") // the organisational domain fails after a miss
	for _, domain := range []string{"servfail.example", "timeout.example", "sub.example.org"} {
		start := time.Now()
		got, err := p.Policy(context.Background(), domain)
		if !errors.Is(err, ErrDMARCTemporary) {
			t.Errorf("Policy(%s) = %+v, %v, want ErrDMARCTemporary", domain, got, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Policy(%s) took %v, want the resolver's timeout", domain, d)
		}
	}
	// Failures are not cached: the next lookup asks again.
	before := srv.Queries("_dmarc.servfail.example")
	_, _ = p.Policy(context.Background(), "servfail.example")
	if srv.Queries("_dmarc.servfail.example") == before {
		t.Error("a SERVFAIL answer was cached, want a new question each time")
	}
}

func TestDMARCCacheHonoursTTL(t *testing.T) {
	c := newClock()
	p, srv := dnsPolicies(t, c,
		`_dmarc.short.example. 60 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.long.example. 3600 IN TXT "v=DMARC1; p=none"`,
	)
	lookup := func(domain, want string) {
		t.Helper()
		got, err := p.Policy(context.Background(), domain)
		if err != nil || got.Policy != want {
			t.Fatalf("Policy(%s) at %s = %+v, %v, want %q", domain, c.Now().Format(time.TimeOnly), got, err, want)
		}
	}
	queries := func(name string, want int) {
		t.Helper()
		if got := srv.Queries(name); got != want {
			t.Errorf("at %s: %d questions for %s, want %d", c.Now().Format(time.TimeOnly), got, name, want)
		}
	}
	lookup("short.example", PolicyReject)
	lookup("long.example", PolicyNone)
	lookup("short.example", PolicyReject)
	queries("_dmarc.short.example", 1)

	// The zone changes; the cache keeps the old answers until their TTL.
	srv.Set(`_dmarc.short.example. 60 IN TXT "v=DMARC1; p=none"`, `_dmarc.long.example. 3600 IN TXT "v=DMARC1; p=reject"`)
	c.Advance(59 * time.Second)
	lookup("short.example", PolicyReject)
	queries("_dmarc.short.example", 1)
	c.Advance(time.Second)
	lookup("short.example", PolicyNone)
	queries("_dmarc.short.example", 2)
	lookup("long.example", PolicyNone)
	queries("_dmarc.long.example", 1)
	c.Advance(time.Hour)
	lookup("long.example", PolicyReject)
	queries("_dmarc.long.example", 2)

	// "No record" is cached too (NegativeTTL when the answer has no SOA),
	// for the domain and its organisational domain.
	lookup("sub.missing.example", "")
	lookup("sub.missing.example", "")
	queries("_dmarc.sub.missing.example", 1)
	queries("_dmarc.missing.example", 1)
	c.Advance(5 * time.Minute)
	lookup("sub.missing.example", "")
	queries("_dmarc.sub.missing.example", 2)
}

func TestDMARCCacheIsBounded(t *testing.T) {
	c := newClock()
	srv := testenv.DNS(t, `_dmarc.a.example. 300 IN TXT "v=DMARC1; p=reject"`, `_dmarc.b.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.c.example. 300 IN TXT "v=DMARC1; p=reject"`)
	p := NewDMARCPolicies(resolver.New([]string{srv.Addr()}, time.Second), DMARCOptions{Now: c.Now, MaxEntries: 2})
	for _, d := range []string{"a.example", "b.example", "c.example", "a.example", "c.example"} {
		if got, err := p.Policy(context.Background(), d); err != nil || got.Policy != PolicyReject {
			t.Fatalf("Policy(%s) = %+v, %v", d, got, err)
		}
	}
	p.mu.Lock()
	n := len(p.cache)
	p.mu.Unlock()
	if n > 2 {
		t.Errorf("cache holds %d answers, want at most MaxEntries 2", n)
	}
}

// TestDecideWithDNS runs the rules with the DMARC check on a real DNS
// server: the author's policy decides whether the author is kept.
func TestDecideWithDNS(t *testing.T) {
	p, srv := dnsPolicies(t, newClock(),
		`_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.quarantine.example. 300 IN TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.none.example. 300 IN TXT "v=DMARC1; p=none"`,
		`_dmarc.org.example. 300 IN TXT "v=DMARC1; p=reject"`,
	)
	srv.Fail("_dmarc.servfail.example")
	srv.Drop("_dmarc.timeout.example")
	r := compile(t, tenantFrom(t, base+`    servers:
      - {name: keep, sequence: 1, host: h, from_filter: 'reject.example, quarantine.example, none.example, sub.org.example, missing.example, servfail.example, timeout.example'}
      - {name: own, sequence: 2, host: h, from_filter: example.com}
`))
	tests := []struct{ author, want string }{
		{"R <r@reject.example>", `"R" <notifications@example.com> via own, FROM_STEP_DMARC_MITIGATION`},
		{"Q <q@quarantine.example>", `"Q" <notifications@example.com> via own, FROM_STEP_DMARC_MITIGATION`},
		{"N <n@none.example>", `"N" <n@none.example> via keep, FROM_STEP_AUTHOR_DOMAIN`},
		{"M <m@missing.example>", `"M" <m@missing.example> via keep, FROM_STEP_AUTHOR_DOMAIN`},
		{"S <s@sub.org.example>", `"S" <notifications@example.com> via own, FROM_STEP_DMARC_MITIGATION`},
		{"F <f@servfail.example>", "error"},
		{"T <t@timeout.example>", "error"},
	}
	for _, tt := range tests {
		d, err := r.Decide(context.Background(), author(t, tt.author), p, DNSFailureError)
		got := "error"
		if err == nil {
			got = d.From.GetHeader() + " via " + d.From.GetServer() + ", " + d.From.GetStep().String()
		} else if !errors.Is(err, ErrDMARCTemporary) {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("Decide(%s) = %s, want %s", tt.author, got, tt.want)
		}
	}
}
