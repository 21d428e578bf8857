package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/platform/testenv"
)

// TestKeygenDomainCheckAndMailTest walks the "Set up your domain" steps:
// the record printed by "dkim keygen", published with SPF, DMARC and MX in
// a DNS server, makes "domain check" pass, and a notification sent by
// "mail-test" through the real pipeline verifies and scores full marks.
func TestKeygenDomainCheckAndMailTest(t *testing.T) {
	dir := t.TempDir()
	getenv := func(string) string { return "" }
	var out bytes.Buffer
	if err := run(context.Background(), []string{"dkim", "keygen", "--domain", "example.com", "--out", filepath.Join(dir, "keys")}, getenv, &out); err != nil {
		t.Fatalf("dkim keygen: %v\n%s", err, out.String())
	}
	// The printed record, in zone-file syntax, as an operator would paste it.
	m := regexp.MustCompile(`(?s)(odoo\._domainkey\.example\.com\. IN TXT (?:\(.*?\)|"[^"\n]*"))`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("dkim keygen printed no record:\n%s", out.String())
	}
	dkimRecord := strings.Replace(m[1], " IN TXT", " 300 IN TXT", 1)
	dns := testenv.DNS(t)
	good := []string{
		dkimRecord,
		`example.com. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.example.com. 300 IN TXT "v=DMARC1; p=reject"`,
		`example.com. 300 IN MX 10 mx.example.com.`,
	}
	dns.Set(good...)
	cfg := fmt.Sprintf(`tenants:
  acme:
    alias_domain: example.com
    dkim: [{domain: example.com, key_file: %s}]
    servers: [{name: relay, host: 127.0.0.1, port: 25, tls: none}]
`, filepath.Join(dir, "keys", "example.com.odoo.pem"))
	cfgPath := filepath.Join(dir, "tenants.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	out.Reset()
	if err := run(context.Background(), []string{"domain", "check", "--config", cfgPath, "--dns", dns.Addr()}, getenv, &out); err != nil {
		t.Fatalf("domain check after publishing the keygen record = %v, want success:\n%s", err, out.String())
	}

	out.Reset()
	if err := run(context.Background(), []string{"mail-test", "--config", cfgPath, "--dns", dns.Addr()}, getenv, &out); err != nil {
		t.Fatalf("mail-test = %v, want full marks:\n%s", err, out.String())
	}
	t.Logf("mail-test:\n%s", out.String())
	if !strings.Contains(out.String(), "score 10.0 / 10") || !regexp.MustCompile(`dkim\s+pass`).MatchString(out.String()) {
		t.Errorf("mail-test output lacks a verified DKIM signature and full marks:\n%s", out.String())
	}

	// Without the DKIM record the signature cannot verify: both commands
	// say so and exit non-zero.
	dns.Set(good[1:]...)
	out.Reset()
	if err := run(context.Background(), []string{"domain", "check", "--config", cfgPath, "--dns", dns.Addr()}, getenv, &out); !errors.Is(err, errChecksFailed) {
		t.Errorf("domain check without the DKIM record = %v, want errChecksFailed:\n%s", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"mail-test", "--config", cfgPath, "--dns", dns.Addr()}, getenv, &out); !errors.Is(err, errLowScore) ||
		!regexp.MustCompile(`dkim\s+FAIL`).MatchString(out.String()) {
		t.Errorf("mail-test without the DKIM record = %v, want errLowScore and a failed dkim row:\n%s", err, out.String())
	}
}
