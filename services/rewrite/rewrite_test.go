package rewrite

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// tenantFrom parses a tenants file of one tenant "acme" whose settings are
// body (YAML, indented by four spaces).
func tenantFrom(t testing.TB, body string) *config.Tenant {
	t.Helper()
	c, err := config.Parse([]byte("tenants:\n  acme:\n"+body), "")
	if err != nil {
		t.Fatalf("config.Parse(%q) = %v", body, err)
	}
	return c.Tenant("acme")
}

func compile(t testing.TB, tn *config.Tenant) *Rules {
	t.Helper()
	r, err := CompileTenant(tn)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func author(t testing.TB, s string) Author {
	t.Helper()
	a, err := ParseAuthor("", s)
	if err != nil {
		t.Fatalf("ParseAuthor(%q) = %v", s, err)
	}
	return a
}

// noDMARC answers "no DMARC record" for every domain and counts lookups.
type fakeDMARC struct {
	mu       sync.Mutex
	policies map[string]DMARCPolicy
	err      error
	asked    []string
}

func (f *fakeDMARC) Policy(_ context.Context, domain string) (DMARCPolicy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, domain)
	if f.err != nil {
		return DMARCPolicy{}, f.err
	}
	if p, ok := f.policies[domain]; ok {
		return p, nil
	}
	return DMARCPolicy{Domain: domain}, nil
}

const base = "    alias_domain: example.com\n"

// Example is one worked example of mail-rules §10.
type Example struct {
	N      int
	Author string
	// Tenant is the tenant's YAML (under "acme:"); empty for #11, which
	// has no alias domain and is built in code.
	Tenant     string
	From, Env  string
	Server     string // "" is the default delivery
	Step       cmv1.FromStep
	Encapsulae bool
}

// Examples are the worked examples of mail-rules §10, row by row.
var Examples = []Example{
	{1, "Bob <bob@example.com>", base + "    servers: [{name: S1, host: h, from_filter: example.com}]\n",
		`"Bob" <bob@example.com>`, "bounce@example.com", "S1", cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, false},
	{2, "Alice <alice@gmail.com>", base + "    servers: [{name: S1, host: h, from_filter: example.com}]\n",
		`"Alice" <notifications@example.com>`, "bounce@example.com", "S1", cmv1.FromStep_FROM_STEP_NOTIFICATION_DOMAIN, true},
	{3, "jane.doe@gmail.com", base + "    servers: [{name: S1, host: h, from_filter: example.com}]\n",
		`"jane.doe" <notifications@example.com>`, "bounce@example.com", "S1", cmv1.FromStep_FROM_STEP_NOTIFICATION_DOMAIN, true},
	{4, "Bob <bob@example.com>", base + "    servers: [{name: S2, host: h, from_filter: notifications@example.com}]\n",
		`"Bob" <notifications@example.com>`, "notifications@example.com", "S2", cmv1.FromStep_FROM_STEP_NOTIFICATION_ADDRESS, true},
	{5, "notifications@example.com", base + "    servers: [{name: S2, host: h, from_filter: notifications@example.com}]\n",
		`notifications@example.com`, "notifications@example.com", "S2", cmv1.FromStep_FROM_STEP_AUTHOR_ADDRESS, false},
	{6, "x@a.com", base + "    servers: [{name: S3, host: h, from_filter: 'a.com, b@c.com'}]\n",
		`x@a.com`, "x@a.com", "S3", cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, false},
	{7, "B <b@c.com>", base + "    servers: [{name: S3, host: h, from_filter: 'a.com, b@c.com'}]\n",
		`"B" <b@c.com>`, "b@c.com", "S3", cmv1.FromStep_FROM_STEP_AUTHOR_ADDRESS, false},
	{8, "z@c.com", base + "    servers: [{name: S3, host: h, from_filter: 'a.com, b@c.com'}]\n",
		`"z" <notifications@example.com>`, "notifications@example.com", "S3", cmv1.FromStep_FROM_STEP_FIRST_SERVER, true},
	{9, "Bob <BOB@EXAMPLE.COM>", base + "    servers: [{name: S, host: h, from_filter: Example.COM}]\n",
		`"Bob" <BOB@EXAMPLE.COM>`, "bounce@example.com", "S", cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, false},
	{10, "Bob <bob@mail.example.com>", base + "    servers: [{name: S1, host: h, from_filter: example.com}]\n",
		`"Bob" <notifications@example.com>`, "bounce@example.com", "S1", cmv1.FromStep_FROM_STEP_NOTIFICATION_DOMAIN, true},
	{11, "Bob <bob@gmail.com>", "",
		`"Bob" <bob@gmail.com>`, "bob@gmail.com", "S0", cmv1.FromStep_FROM_STEP_SERVER_WITHOUT_FILTER, false},
	{12, "Bob <bob@example.com>", base + "    servers: [{name: S0, host: h}]\n",
		`"Bob" <notifications@example.com>`, "bounce@example.com", "S0", cmv1.FromStep_FROM_STEP_SERVER_WITHOUT_FILTER, true},
	{13, "Bob <bob@gmail.com>", base,
		`"Bob" <bob@gmail.com>`, "bounce@example.com", "", cmv1.FromStep_FROM_STEP_DEFAULT_FILTER_AUTHOR, false},
	{14, "Bob <bob@gmail.com>", base + "    default_from_filter: example.com\n",
		`"Bob" <notifications@example.com>`, "bounce@example.com", "", cmv1.FromStep_FROM_STEP_DEFAULT_FILTER_NOTIFICATION, true},
	{15, "Bob <bob@example.com>", base + "    default_from_filter: notifications@example.com\n",
		`"Bob" <notifications@example.com>`, "notifications@example.com", "", cmv1.FromStep_FROM_STEP_DEFAULT_FILTER_NOTIFICATION, true},
	{16, "Alice <alice@gmail.com>", base + "    default_from: noreply@other.org\n    servers: [{name: S1, host: h, from_filter: example.com}]\n",
		`"Alice" <noreply@other.org>`, "bounce@example.com", "S1", cmv1.FromStep_FROM_STEP_FIRST_SERVER, true},
}

func (ex Example) rules(t testing.TB) *Rules {
	if ex.Tenant == "" {
		// #11: no alias domain (Odoo without mail.catchall.domain), one
		// server without filter. The tenants file cannot say this
		// (alias_domain is required), so the tenant is built in code.
		return compile(t, &config.Tenant{ID: "acme", Servers: []*config.Server{{Name: "S0", Host: "h"}}})
	}
	return compile(t, tenantFrom(t, ex.Tenant))
}

// TestWorkedExamples runs every worked example of mail-rules §10 through
// the rules. DNS answers "no DMARC record" for every domain, as the
// examples assume Odoo's behaviour.
func TestWorkedExamples(t *testing.T) {
	for _, ex := range Examples {
		t.Run(fmt.Sprint(ex.N), func(t *testing.T) {
			d, err := ex.rules(t).Decide(context.Background(), author(t, ex.Author), &fakeDMARC{}, DNSFailureError)
			if err != nil {
				t.Fatalf("#%d Decide(%s) = %v", ex.N, ex.Author, err)
			}
			got := fmt.Sprintf("From %s, env %s, server %q, step %s, encapsulated %v",
				d.From.GetHeader(), d.EnvelopeFrom, d.From.GetServer(), d.From.GetStep(), d.From.GetEncapsulated())
			want := fmt.Sprintf("From %s, env %s, server %q, step %s, encapsulated %v", ex.From, ex.Env, ex.Server, ex.Step, ex.Encapsulae)
			if got != want {
				t.Errorf("#%d Decide(%s) = %s\nwant %s\nreason: %s", ex.N, ex.Author, got, want, d.From.GetReason())
			}
			if d.From.GetReason() == "" {
				t.Errorf("#%d Decide(%s) has no reason", ex.N, ex.Author)
			}
			// Steps 4 and 5's last branch fall back, with a warning.
			fallback := ex.Step == cmv1.FromStep_FROM_STEP_FIRST_SERVER || ex.Step == cmv1.FromStep_FROM_STEP_DEFAULT_FILTER_FALLBACK
			if (d.From.GetWarning() != "") != fallback {
				t.Errorf("#%d Decide(%s) warning = %q, want one only for a fallback", ex.N, ex.Author, d.From.GetWarning())
			}
		})
	}
}

func TestExactAddressBeatsDomainWhateverTheSequence(t *testing.T) {
	r := compile(t, tenantFrom(t, base+`    servers:
      - {name: by-domain, sequence: 1, host: h, from_filter: c.com}
      - {name: by-address, sequence: 2, host: h, from_filter: b@c.com}
`))
	d, err := r.Decide(context.Background(), author(t, "B <b@c.com>"), nil, DNSFailureError)
	if err != nil || d.From.GetServer() != "by-address" || d.From.GetStep() != cmv1.FromStep_FROM_STEP_AUTHOR_ADDRESS {
		t.Errorf("Decide(b@c.com) = %v %v (%v), want server by-address, author address", d.From.GetServer(), d.From.GetStep(), err)
	}
}

func TestFilterMatching(t *testing.T) {
	tests := []struct {
		filter, addr string
		want         bool
	}{
		{"", "a@b.com", true},
		{"  ,  ", "a@b.com", true},
		{"b.com", "a@b.com", true},
		{" B.COM ", "a@b.com", true},
		{"b.com", "a@sub.b.com", false},
		{"sub.b.com", "a@b.com", false},
		{"a@b.com", "a@b.com", true},
		{"A@B.com", "a@b.com", true},
		{"x@b.com", "a@b.com", false},
		{"éxample.com", "a@éxample.com", true},
		{"éxample.com", "a@xn--xample-9ua.com", false},
		{"xn--xample-9ua.com", "a@éxample.com", false},
		{"Jérôme@b.com", "jérôme@b.com", false}, // a non-ASCII local part keeps its case
		{"Jérôme@b.com", "Jérôme@b.com", true},
		{`"fake@x.com" <a@y.com>`, "a@y.com", true},
	}
	for _, tt := range tests {
		f, err := ParseFromFilter(tt.filter)
		if err != nil {
			t.Errorf("ParseFromFilter(%q) = %v", tt.filter, err)
			continue
		}
		norm, err := NormalizeAddress(tt.addr)
		if err != nil {
			t.Fatalf("NormalizeAddress(%q) = %v", tt.addr, err)
		}
		if got := f.Matches(norm); got != tt.want {
			t.Errorf("ParseFromFilter(%q).Matches(%s) = %v, want %v", tt.filter, norm, got, tt.want)
		}
	}
}

func TestNormalizeAddress(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Bob@Example.COM", "bob@example.com"},
		{"Bob <BOB@EXAMPLE.COM>", "bob@example.com"},
		{`"fake@x.com" <a@y.com>`, "a@y.com"},
		{"Jérôme@Exämple.COM", "Jérôme@exämple.com"},
		{"=?utf-8?q?J=C3=A9r=C3=B4me?= <j@x.com>", "j@x.com"},
	}
	for _, tt := range tests {
		if got, err := NormalizeAddress(tt.in); err != nil || got != tt.want {
			t.Errorf("NormalizeAddress(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "  ", "bob", "a@b.com, c@d.com", "a@b.com\r\nBcc: x@y.com", "a\x00@b.com", "a@b.com\n", "undisclosed-recipients:;"} {
		if got, err := NormalizeAddress(bad); !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("NormalizeAddress(%q) = %q, %v, want ErrInvalidAddress", bad, got, err)
		}
	}
}

func TestParseAuthorRejectsInvalid(t *testing.T) {
	tests := []struct{ name, email string }{
		{"", ""},                                      // no address
		{"", "a@b.com, c@d.com"},                      // several addresses
		{"", "a@b.com\r\nBcc: x@y.com"},               // CR/LF
		{"", "a\x00@b.com"},                           // NUL
		{"Bob\r\nBcc: x@y.com", "bob@b.com"},          // CR/LF in the name
		{"", "=?utf-8?q?Bob=0D=0ABcc:_x?= <a@b.com>"}, // CR/LF hidden in an encoded word
		{"", "not an address"},
		{"", "a@[127.0.0.1]"},
		{"", "a@exa_mple.com"},
	}
	for _, tt := range tests {
		if a, err := ParseAuthor(tt.name, tt.email); !errors.Is(err, ErrInvalidAuthor) {
			t.Errorf("ParseAuthor(%q, %q) = %+v, %v, want ErrInvalidAuthor", tt.name, tt.email, a, err)
		}
	}
	a, err := ParseAuthor("", "Bob <bob@example.com>")
	if err != nil || a.Name != "Bob" || a.Address != "bob@example.com" {
		t.Errorf("ParseAuthor(\"\", Bob <bob@example.com>) = %+v, %v, want name Bob", a, err)
	}
	a, err = ParseAuthor("Robert", "Bob <bob@example.com>")
	if err != nil || a.Name != "Robert" {
		t.Errorf("ParseAuthor(Robert, Bob <bob@example.com>) = %+v, %v, want the partner's name Robert", a, err)
	}
}

func TestFormatAddress(t *testing.T) {
	tests := []struct{ name, addr, want string }{
		{"Bob", "n@example.com", `"Bob" <n@example.com>`},
		{"", "n@example.com", "n@example.com"},
		{`Bob "The Builder" \o/`, "n@example.com", `"Bob \"The Builder\" \\o/" <n@example.com>`},
		{"Jérôme", "n@example.com", "=?utf-8?q?J=C3=A9r=C3=B4me?= <n@example.com>"},
		{"Bob\r\nBcc: x@y.com", "n@example.com", "=?utf-8?b?Qm9iDQpCY2M6IHhAeS5jb20=?= <n@example.com>"},
		{`Jérôme "JJ"`, "n@example.com", "=?utf-8?b?SsOpcsO0bWUgIkpKIg==?= <n@example.com>"},
		{"Jérôme Ç-3", "n@example.com", "=?utf-8?q?J=C3=A9r=C3=B4me_=C3=87-3?= <n@example.com>"},
		{"Tab\there", "n@example.com", "\"Tab\there\" <n@example.com>"},
		{"Bell\a", "n@example.com", "=?utf-8?b?QmVsbAc=?= <n@example.com>"},
	}
	for _, tt := range tests {
		if got := FormatAddress(tt.name, tt.addr); got != tt.want {
			t.Errorf("FormatAddress(%q, %q) = %s, want %s", tt.name, tt.addr, got, tt.want)
		}
	}
}

func TestWireAddress(t *testing.T) {
	tests := []struct{ in, want string }{
		{"bob@example.com", "bob@example.com"},
		{"BOB@EXAMPLE.COM", "BOB@EXAMPLE.COM"},
		{"bob@éxample.com", "bob@xn--xample-9ua.com"},
		{"bob@Bücher.DE", "bob@xn--bcher-kva.de"},
		{"a b@example.com", `"a b"@example.com`},
		{`a"b@example.com`, `"a\"b"@example.com`},
		{"jérôme@example.com", "jérôme@example.com"},
	}
	for _, tt := range tests {
		if got, err := WireAddress(tt.in); err != nil || got != tt.want {
			t.Errorf("WireAddress(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestNonASCIIAuthorOnTheWire: a Unicode domain appears as IDNA in From
// and in the envelope; a non-ASCII name is an encoded word.
func TestNonASCIIAuthorOnTheWire(t *testing.T) {
	r := compile(t, tenantFrom(t, base+"    servers: [{name: S1, host: h, from_filter: 'éxample.org'}]\n"))
	d, err := r.Decide(context.Background(), author(t, "Jérôme <jerome@éxample.org>"), nil, DNSFailureError)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.From.GetHeader(), "=?utf-8?q?J=C3=A9r=C3=B4me?= <jerome@xn--xample-9ua.org>"; got != want {
		t.Errorf("From = %s, want %s", got, want)
	}
	if got, _ := WireAddress(d.EnvelopeFrom); got != "jerome@xn--xample-9ua.org" {
		t.Errorf("envelope on the wire = %s, want jerome@xn--xample-9ua.org", got)
	}
	d, err = r.Decide(context.Background(), author(t, "Jérôme <jerome@gmail.com>"), nil, DNSFailureError)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.From.GetHeader(), "=?utf-8?q?J=C3=A9r=C3=B4me?= <notifications@example.com>"; got != want {
		t.Errorf("From = %s, want %s", got, want)
	}
}

func TestDMARCMitigation(t *testing.T) {
	servers := base + `    servers:
      - {name: external, sequence: 1, host: h, from_filter: 'gmail.com, yahoo.com, corp.example.org, sub.example.com'}
      - {name: own, sequence: 2, host: h, from_filter: example.com}
`
	policies := map[string]DMARCPolicy{
		"yahoo.com":        {Domain: "yahoo.com", Record: "_dmarc.yahoo.com", Policy: PolicyReject, Percent: 100},
		"gmail.com":        {Domain: "gmail.com", Record: "_dmarc.gmail.com", Policy: PolicyNone, Percent: 100},
		"corp.example.org": {Domain: "corp.example.org", Record: "_dmarc.example.org", Policy: PolicyQuarantine, Percent: 100},
	}
	tests := []struct {
		name, tenant, author string
		wantFrom, wantServer string
		wantStep             cmv1.FromStep
		wantPolicy           string
		wantAsked            bool
	}{
		{"reject", servers, "Yolanda <y@yahoo.com>", `"Yolanda" <notifications@example.com>`, "own",
			cmv1.FromStep_FROM_STEP_DMARC_MITIGATION, PolicyReject, true},
		{"quarantine on the organisational domain", servers, "Carl <c@corp.example.org>", `"Carl" <notifications@example.com>`, "own",
			cmv1.FromStep_FROM_STEP_DMARC_MITIGATION, PolicyQuarantine, true},
		{"none", servers, "Gina <g@gmail.com>", `"Gina" <g@gmail.com>`, "external",
			cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, PolicyNone, true},
		{"tenant signs for the domain", servers + "    dkim: [{domain: yahoo.com, key_file: k.pem}]\n", "Yolanda <y@yahoo.com>",
			`"Yolanda" <y@yahoo.com>`, "external", cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, "", false},
		{"tenant signs for the organisational domain", servers + "    dkim: [{domain: example.org, key_file: k.pem}]\n", "Carl <c@corp.example.org>",
			`"Carl" <c@corp.example.org>`, "external", cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, "", false},
		{"tenant's own domain", servers, "Sam <sam@sub.example.com>", `"Sam" <sam@sub.example.com>`, "external",
			cmv1.FromStep_FROM_STEP_AUTHOR_DOMAIN, "", false},
		{"sent as the notification address anyway", servers, "Zoe <z@example.net>", `"Zoe" <notifications@example.com>`, "own",
			cmv1.FromStep_FROM_STEP_NOTIFICATION_DOMAIN, "", false},
		{"keep-author configuration (no servers)", base, "Yolanda <y@yahoo.com>", `"Yolanda" <notifications@example.com>`, "",
			cmv1.FromStep_FROM_STEP_DMARC_MITIGATION, PolicyReject, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dm := &fakeDMARC{policies: policies}
			d, err := compile(t, tenantFrom(t, tt.tenant)).Decide(context.Background(), author(t, tt.author), dm, DNSFailureError)
			if err != nil {
				t.Fatalf("Decide(%s) = %v", tt.author, err)
			}
			got := fmt.Sprintf("%s via %q, %s, dmarc %q", d.From.GetHeader(), d.From.GetServer(), d.From.GetStep(), d.From.GetDmarcPolicy())
			want := fmt.Sprintf("%s via %q, %s, dmarc %q", tt.wantFrom, tt.wantServer, tt.wantStep, tt.wantPolicy)
			if got != want {
				t.Errorf("Decide(%s) = %s\nwant %s\nreason: %s", tt.author, got, want, d.From.GetReason())
			}
			if asked := len(dm.asked) > 0; asked != tt.wantAsked {
				t.Errorf("Decide(%s) looked up DMARC for %v, want a lookup: %v", tt.author, dm.asked, tt.wantAsked)
			}
			if tt.wantStep == cmv1.FromStep_FROM_STEP_DMARC_MITIGATION {
				if !d.From.GetEncapsulated() || !strings.Contains(d.From.GetReason(), "DMARC p="+tt.wantPolicy) {
					t.Errorf("Decide(%s) encapsulated %v, reason %q, want encapsulation and the policy in the reason",
						tt.author, d.From.GetEncapsulated(), d.From.GetReason())
				}
			}
		})
	}
}

func TestDMARCTemporaryFailure(t *testing.T) {
	r := compile(t, tenantFrom(t, base+"    servers: [{name: S1, host: h, from_filter: 'yahoo.com, example.com'}]\n"))
	dm := &fakeDMARC{err: fmt.Errorf("%w: SERVFAIL", ErrDMARCTemporary)}
	a := author(t, "Yolanda <y@yahoo.com>")
	if _, err := r.Decide(context.Background(), a, dm, DNSFailureError); !errors.Is(err, ErrDMARCTemporary) {
		t.Fatalf("Decide with DNS failing = %v, want ErrDMARCTemporary", err)
	}
	d, err := r.Decide(context.Background(), a, dm, DNSFailureRewrite)
	if err != nil {
		t.Fatal(err)
	}
	if d.From.GetHeader() != `"Yolanda" <notifications@example.com>` || d.From.GetStep() != cmv1.FromStep_FROM_STEP_DMARC_MITIGATION ||
		!strings.Contains(d.From.GetWarning(), "SERVFAIL") {
		t.Errorf("Decide on the last attempt = %s %s warning %q, want the notification address with a warning naming the failure",
			d.From.GetHeader(), d.From.GetStep(), d.From.GetWarning())
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	tests := []struct{ body, want string }{
		{base + "    default_from: 'not an address'\n", "default_from"},
		{base + "    default_from: 'Bob <bob@example.com>'\n", "default_from"},
		{base + "    default_from: 'a@@b'\n", "default_from"},
		{base + "    default_from_filter: 'exa mple.com'\n", "default_from_filter"},
		{base + "    servers: [{name: relay, host: h, from_filter: 'example.com, -bad-.com'}]\n", `server 0 ("relay"): from_filter`},
		{base + "    servers: [{name: relay, host: h, from_filter: 'a@b@c'}]\n", "from_filter"},
		{base + "    alias_domain: exa..mple.com\n", "alias_domain"},
		{"    alias_domain: example.com\n    dkim: [{domain: 'bad domain', key_file: k}]\n", "dkim[0]: domain"},
		{base + "    bounce_alias: 'bou nce'\n", "bounce_alias"},
	}
	for _, tt := range tests {
		_, err := config.Parse([]byte("tenants:\n  acme:\n"+tt.body), "")
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("config.Parse(%q) = %v, want an error naming %s", tt.body, err, tt.want)
		}
	}
	// A tenant built in code is checked by CompileTenant, at start-up.
	for _, tn := range []*config.Tenant{
		{ID: "acme", AliasDomain: "example.com", Servers: []*config.Server{{Name: "s", FromFilter: "x <y>"}}},
		{ID: "acme", AliasDomain: "example.com", DefaultFrom: "a b@c"},
		{ID: "acme", AliasDomain: "éxample.com"},
	} {
		if _, err := CompileTenant(tn); err == nil {
			t.Errorf("CompileTenant(%+v) = nil error, want one", tn)
		}
	}
}

func TestOrganizationalDomain(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":          "example.com",
		"mail.example.com":     "example.com",
		"a.b.example.co.uk":    "example.co.uk",
		"com":                  "com",
		"Mail.Example.COM.":    "example.com",
		"xn--bcher-kva.de":     "xn--bcher-kva.de",
		"x.y.unknown-tld-zzzz": "y.unknown-tld-zzzz",
	} {
		if got := OrganizationalDomain(in); got != want {
			t.Errorf("OrganizationalDomain(%q) = %q, want %q", in, got, want)
		}
	}
}
