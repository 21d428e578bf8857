package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/platform/testenv"
)

// explainExamples are the worked examples of mail-rules §10 as "rewrite
// explain" must print them. #11 is missing: it needs a tenant without
// alias domain, which the tenants file does not allow (alias_domain is
// required); services/rewrite runs it through the rules directly.
var explainExamples = []struct {
	n                          int
	author, tenant             string
	from, envelope, server     string
	wantEncapsulated, fallback bool
}{
	{1, "Bob <bob@example.com>", "servers: [{name: S1, host: h, from_filter: example.com}]", `"Bob" <bob@example.com>`, "bounce@example.com", "S1", false, false},
	{2, "Alice <alice@gmail.com>", "servers: [{name: S1, host: h, from_filter: example.com}]", `"Alice" <notifications@example.com>`, "bounce@example.com", "S1", true, false},
	{3, "jane.doe@gmail.com", "servers: [{name: S1, host: h, from_filter: example.com}]", `"jane.doe" <notifications@example.com>`, "bounce@example.com", "S1", true, false},
	{4, "Bob <bob@example.com>", "servers: [{name: S2, host: h, from_filter: notifications@example.com}]", `"Bob" <notifications@example.com>`, "notifications@example.com", "S2", true, false},
	{5, "notifications@example.com", "servers: [{name: S2, host: h, from_filter: notifications@example.com}]", `notifications@example.com`, "notifications@example.com", "S2", false, false},
	{6, "x@a.com", "servers: [{name: S3, host: h, from_filter: 'a.com, b@c.com'}]", `x@a.com`, "x@a.com", "S3", false, false},
	{7, "B <b@c.com>", "servers: [{name: S3, host: h, from_filter: 'a.com, b@c.com'}]", `"B" <b@c.com>`, "b@c.com", "S3", false, false},
	{8, "z@c.com", "servers: [{name: S3, host: h, from_filter: 'a.com, b@c.com'}]", `"z" <notifications@example.com>`, "notifications@example.com", "S3", true, true},
	{9, "Bob <BOB@EXAMPLE.COM>", "servers: [{name: S, host: h, from_filter: Example.COM}]", `"Bob" <BOB@EXAMPLE.COM>`, "bounce@example.com", "S", false, false},
	{10, "Bob <bob@mail.example.com>", "servers: [{name: S1, host: h, from_filter: example.com}]", `"Bob" <notifications@example.com>`, "bounce@example.com", "S1", true, false},
	{12, "Bob <bob@example.com>", "servers: [{name: S0, host: h}]", `"Bob" <notifications@example.com>`, "bounce@example.com", "S0", true, false},
	{13, "Bob <bob@gmail.com>", "", `"Bob" <bob@gmail.com>`, "bounce@example.com", "default", false, false},
	{14, "Bob <bob@gmail.com>", "default_from_filter: example.com", `"Bob" <notifications@example.com>`, "bounce@example.com", "default", true, false},
	{15, "Bob <bob@example.com>", "default_from_filter: notifications@example.com", `"Bob" <notifications@example.com>`, "notifications@example.com", "default", true, false},
	{16, "Alice <alice@gmail.com>", "default_from: noreply@other.org\n    servers: [{name: S1, host: h, from_filter: example.com}]", `"Alice" <noreply@other.org>`, "bounce@example.com", "S1", true, true},
}

// writeTenants writes a tenants file with tenant acme on example.com and
// the extra settings body (YAML at the tenant's indentation).
func writeTenants(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tenants.yaml")
	doc := "tenants:\n  acme:\n    alias_domain: example.com\n"
	if body != "" {
		doc += "    " + body + "\n"
	}
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type explained struct {
	From           string `json:"from"`
	SendingAddress string `json:"sending_address"`
	EnvelopeFrom   string `json:"envelope_from"`
	EnvelopeOnWire string `json:"envelope_on_wire"`
	Server         string `json:"server"`
	Step           string `json:"step"`
	Reason         string `json:"reason"`
	Encapsulated   bool   `json:"encapsulated"`
	DMARCPolicy    string `json:"dmarc_policy"`
	Warning        string `json:"warning"`
	DNSError       string `json:"dns_error"`
}

func explain(t *testing.T, config, author, dns string) (explained, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), []string{"rewrite", "explain", "--config", config, "--tenant", "acme", "--author", author, "--dns", dns},
		func(string) string { return "" }, &out)
	if err != nil {
		return explained{}, err
	}
	var e explained
	if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil {
		t.Fatalf("rewrite explain printed %q, not JSON: %v", out.String(), jerr)
	}
	return e, nil
}

// TestRewriteExplainWorkedExamples runs the worked examples of mail-rules
// §10 through "chattermail rewrite explain", with a DNS server that knows
// no DMARC record.
func TestRewriteExplainWorkedExamples(t *testing.T) {
	dns := testenv.DNS(t)
	for _, ex := range explainExamples {
		t.Run(fmt.Sprint(ex.n), func(t *testing.T) {
			e, err := explain(t, writeTenants(t, ex.tenant), ex.author, dns.Addr())
			if err != nil {
				t.Fatalf("#%d rewrite explain --author %q = %v", ex.n, ex.author, err)
			}
			got := fmt.Sprintf("from %s, envelope_from %s, server %s, encapsulated %v", e.From, e.EnvelopeFrom, e.Server, e.Encapsulated)
			want := fmt.Sprintf("from %s, envelope_from %s, server %s, encapsulated %v", ex.from, ex.envelope, ex.server, ex.wantEncapsulated)
			if got != want {
				t.Errorf("#%d rewrite explain --author %q = %s\nwant %s\nreason: %s", ex.n, ex.author, got, want, e.Reason)
			}
			if e.Reason == "" || e.Step == "" || (e.Warning != "") != ex.fallback {
				t.Errorf("#%d reason %q, step %q, warning %q: want a reason, a step, and a warning only for a fallback", ex.n, e.Reason, e.Step, e.Warning)
			}
			if wantVERP := ex.envelope == "bounce@example.com"; wantVERP != (e.EnvelopeOnWire == "bounce+<token>@example.com") {
				t.Errorf("#%d envelope_on_wire = %q, want the VERP form exactly when the envelope is the bounce address", ex.n, e.EnvelopeOnWire)
			}
		})
	}
}

// TestRewriteExplainDMARC: explain looks the author's DMARC policy up as
// the stage does, and says why it rewrote.
func TestRewriteExplainDMARC(t *testing.T) {
	dns := testenv.DNS(t,
		`_dmarc.yahoo.com. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.gmail.com. 300 IN TXT "v=DMARC1; p=none"`)
	dns.Fail("_dmarc.broken.example")
	cfg := writeTenants(t, `servers:
      - {name: partners, sequence: 1, host: h, from_filter: 'yahoo.com, gmail.com, broken.example'}
      - {name: own, sequence: 2, host: h, from_filter: example.com}`)
	tests := []struct{ author, from, server, step, policy, dnsError string }{
		{"Yolanda <y@yahoo.com>", `"Yolanda" <notifications@example.com>`, "own", "dmarc_mitigation", "reject", ""},
		{"Gina <g@gmail.com>", `"Gina" <g@gmail.com>`, "partners", "author_domain", "none", ""},
		{"Bea <b@broken.example>", `"Bea" <notifications@example.com>`, "own", "dmarc_mitigation", "", "SERVFAIL"},
	}
	for _, tt := range tests {
		e, err := explain(t, cfg, tt.author, dns.Addr())
		if err != nil {
			t.Fatalf("rewrite explain --author %q = %v", tt.author, err)
		}
		if e.From != tt.from || e.Server != tt.server || e.Step != tt.step || e.DMARCPolicy != tt.policy || !strings.Contains(e.DNSError, tt.dnsError) {
			t.Errorf("rewrite explain --author %q = %+v, want from %s via %s, step %s, dmarc %q, dns error %q", tt.author, e, tt.from, tt.server, tt.step, tt.policy, tt.dnsError)
		}
	}
}

func TestRewriteExplainErrors(t *testing.T) {
	dns := testenv.DNS(t)
	good := writeTenants(t, "")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"rewrite"}, "usage"},
		{[]string{"rewrite", "explain", "--config", good, "--tenant", "acme"}, "usage"},
		{[]string{"rewrite", "explain", "--config", good, "--tenant", "nope", "--author", "a@b.com"}, `unknown tenant "nope"`},
		{[]string{"rewrite", "explain", "--config", good, "--tenant", "acme", "--author", "a@b.com, c@d.com"}, "invalid author"},
		{[]string{"rewrite", "explain", "--config", good, "--tenant", "acme", "--author", "a@b.com\r\nBcc: x@y.com"}, "CR, LF or NUL"},
		{[]string{"rewrite", "explain", "--config", writeTenants(t, "servers: [{name: S, host: h, from_filter: 'exa mple.com'}]"), "--tenant", "acme", "--author", "a@b.com"}, "from_filter"},
		{[]string{"rewrite", "explain", "--config", writeTenants(t, "default_from: 'no reply'"), "--tenant", "acme", "--author", "a@b.com"}, "default_from"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		err := run(context.Background(), append(tt.args, "--dns", dns.Addr()), func(string) string { return "" }, &out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("chattermail %q = %v, want an error mentioning %q", tt.args, err, tt.want)
		}
	}
}
