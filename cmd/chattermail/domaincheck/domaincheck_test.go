package domaincheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/dkimkey"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/testenv"
)

// zone renders records in zone-file syntax; values longer than 255
// octets are split into several strings.
func txt(name, value string) string {
	return strings.ReplaceAll(dkimkey.ZoneLines(name, value), "\n\t", " ")
}

type fixture struct {
	tenant    *config.Tenant
	dkimValue string
	other     string // a record for a key that is not the tenant's
}

func newFixture(t *testing.T, defaultFrom string, withKey bool) *fixture {
	t.Helper()
	dir := t.TempDir()
	key, _ := dkimkey.Generate(dkimkey.RSA2048)
	p, _ := dkimkey.EncodePEM(key)
	if err := os.WriteFile(filepath.Join(dir, "k.pem"), p, 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := dkimkey.Generate(dkimkey.Ed25519)
	doc := fmt.Sprintf("tenants:\n  acme:\n    alias_domain: example.com\n    default_from: %s\n    servers: [{name: relay, host: mail.relay.test}]\n", defaultFrom)
	if withKey {
		doc += "    dkim: [{domain: example.com, key_file: k.pem}]\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "t.yaml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(filepath.Join(dir, "t.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{tenant: cfg.Tenant("acme")}
	f.dkimValue, _ = dkimkey.Record(key.Public())
	f.other, _ = dkimkey.Record(other.Public())
	return f
}

func (f *fixture) goodZone() map[string]string {
	return map[string]string{
		"spf":   `example.com. 300 IN TXT "v=spf1 ip4:127.0.0.10 -all"`,
		"dkim":  txt("odoo._domainkey.example.com. 300", f.dkimValue),
		"dmarc": `_dmarc.example.com. 300 IN TXT "v=DMARC1; p=reject"`,
		"mx":    `example.com. 300 IN MX 10 mx.example.com.`,
		"host":  `mail.relay.test. 300 IN A 127.0.0.10`,
	}
}

func run(t *testing.T, f *fixture, zone map[string]string, extra []string, include string) *Report {
	t.Helper()
	var recs []string
	for _, r := range zone {
		if r != "" {
			recs = append(recs, r)
		}
	}
	srv := testenv.DNS(t, append(recs, extra...)...)
	c := &Checker{DNS: resolver.New([]string{srv.Addr()}, 500*time.Millisecond), SPFInclude: include}
	return c.Tenant(context.Background(), f.tenant)
}

func result(r *Report, check string) Result {
	for _, x := range r.Results {
		if x.Check == check {
			return x
		}
	}
	return Result{}
}

func TestCorrectSetupPasses(t *testing.T) {
	f := newFixture(t, "notifications", true)
	r := run(t, f, f.goodZone(), nil, "")
	for _, x := range r.Results {
		if x.Status != OK {
			t.Errorf("check %s %s = %s (%s), want ok", x.Check, x.Name, x.Status, x.Detail)
		}
	}
	if r.Failed() {
		t.Error("Failed() = true for a correct setup")
	}
}

func TestProblemsAreFoundWithTheirFix(t *testing.T) {
	f := newFixture(t, "notifications", true)
	chain := []string{}
	for i := range 11 {
		chain = append(chain, fmt.Sprintf(`l%d.example.com. 300 IN TXT "v=spf1 include:l%d.example.com -all"`, i, i+1))
	}
	chain = append(chain, `l11.example.com. 300 IN TXT "v=spf1 ip4:127.0.0.10 -all"`)
	tests := []struct {
		name     string
		change   map[string]string
		extra    []string
		include  string
		check    string
		want     Status
		inDetail string
		inFix    string
	}{
		{"no SPF", map[string]string{"spf": ""}, nil, "", "spf", Fail, "no SPF record", `v=spf1 ip4:127.0.0.10 ~all`},
		{"two SPF records", map[string]string{"spf": `example.com. 300 IN TXT "v=spf1 ip4:127.0.0.10 -all"`},
			[]string{`example.com. 300 IN TXT "v=spf1 include:_spf.other.test ~all"`}, "", "spf", Fail, "2 SPF records", "replace them with one"},
		{"SPF without the include", map[string]string{"spf": `example.com. 300 IN TXT "v=spf1 include:_spf.existing.test ~all"`},
			[]string{`_spf.existing.test. 300 IN TXT "v=spf1 ip4:10.9.9.9 -all"`}, "include:_spf.new.test", "spf", Fail, "does not authorise",
			`v=spf1 include:_spf.new.test include:_spf.existing.test ~all`},
		{"too many lookups", map[string]string{"spf": `example.com. 300 IN TXT "v=spf1 include:l0.example.com -all"`}, chain, "", "spf", Fail, "more than 10 DNS lookups", ""},
		{"missing DKIM record", map[string]string{"dkim": ""}, nil, "", "dkim", Fail, "no DKIM record", "odoo._domainkey.example.com. IN TXT"},
		{"DKIM record with another key", map[string]string{"dkim": txt("odoo._domainkey.example.com. 300", f.other)}, nil, "", "dkim", Fail, "another key", "v=DKIM1; k=rsa"},
		{"DKIM through a CNAME", map[string]string{"dkim": `odoo._domainkey.example.com. 300 IN CNAME odoo-example-com._domainkey.provider.test.`},
			[]string{txt("odoo-example-com._domainkey.provider.test. 300", f.dkimValue)}, "", "dkim", OK, "record matches", ""},
		{"no MX", map[string]string{"mx": ""}, nil, "", "mx", Fail, "no MX record", "IN MX"},
		{"no DMARC", map[string]string{"dmarc": ""}, nil, "", "dmarc", Warn, "no DMARC record", "v=DMARC1; p=none"},
	}
	for _, tt := range tests {
		zone := f.goodZone()
		for k, v := range tt.change {
			zone[k] = v
		}
		got := result(run(t, f, zone, tt.extra, tt.include), tt.check)
		if got.Status != tt.want || !strings.Contains(got.Detail, tt.inDetail) || !strings.Contains(got.Fix, tt.inFix) {
			t.Errorf("%s: %s = %s %q fix %q, want %s with %q and fix containing %q", tt.name, tt.check, got.Status, got.Detail, got.Fix, tt.want, tt.inDetail, tt.inFix)
		}
	}
}

func TestDMARCRejectWithMisalignedEnvelope(t *testing.T) {
	// Notifications come from brand.test, the envelope is on example.com,
	// and there is no DKIM key: nothing aligns with brand.test's reject.
	f := newFixture(t, "notifications@brand.test", false)
	zone := f.goodZone()
	zone["dkim"] = ""
	zone["dmarc"] = `_dmarc.brand.test. 300 IN TXT "v=DMARC1; p=reject"`
	got := result(run(t, f, zone, nil, ""), "dmarc")
	if got.Status != Fail || !strings.Contains(got.Detail, "policy reject") {
		t.Errorf("dmarc = %s %q, want fail naming policy reject", got.Status, got.Detail)
	}
}

func TestMergeSPF(t *testing.T) {
	tests := []struct {
		existing string
		mechs    []string
		want     string
	}{
		{"", []string{"ip4:1.2.3.4"}, "v=spf1 ip4:1.2.3.4 ~all"},
		{"v=spf1 include:_spf.existing -all", []string{"include:_spf.new"}, "v=spf1 include:_spf.new include:_spf.existing -all"},
		{"v=spf1 ip4:1.2.3.4 ~all", []string{"ip4:1.2.3.4"}, "v=spf1 ip4:1.2.3.4 ~all"},
	}
	for _, tt := range tests {
		if got := mergeSPF(tt.existing, tt.mechs); got != tt.want {
			t.Errorf("mergeSPF(%q, %v) = %q, want %q", tt.existing, tt.mechs, got, tt.want)
		}
	}
}
