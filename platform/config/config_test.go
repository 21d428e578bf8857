package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseDefaultsAndDerivedAddresses(t *testing.T) {
	c, err := Parse([]byte(`
tenants:
  acme:
    alias_domain: Example.COM
    servers:
      - {name: b, sequence: 20, host: b.example.com}
      - {name: a, sequence: 10, host: a.example.com, tls: implicit}
  other:
    alias_domain: other.org
    default_from: noreply@mail.other.org
    catchall_alias: replies
    bounce_alias: returns
    daily_limit: 1000
    time_zone: Europe/Paris
`), "")
	if err != nil {
		t.Fatal(err)
	}
	acme := c.Tenant("acme")
	checks := []struct{ name, got, want string }{
		{"acme alias domain", acme.AliasDomain, "example.com"},
		{"acme notification", acme.NotificationAddress(), "notifications@example.com"},
		{"acme bounce", acme.BounceAddress(), "bounce@example.com"},
		{"acme catchall", acme.CatchallAddress(), "catchall@example.com"},
		{"acme first server", acme.Servers[0].Name, "a"},
		{"other notification", c.Tenant("other").NotificationAddress(), "noreply@mail.other.org"},
		{"other bounce", c.Tenant("other").BounceAddress(), "returns@other.org"},
		{"other catchall", c.Tenant("other").CatchallAddress(), "replies@other.org"},
		{"other zone", c.Tenant("other").Location().String(), "Europe/Paris"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
	if acme.DailyLimit != DefaultDailyLimit || acme.Servers[0].Port != 465 || acme.Servers[1].Port != 587 || acme.Servers[1].TLS != TLSStartTLS {
		t.Errorf("defaults: limit %d, ports %d/%d, tls %q; want 200, 465/587, starttls",
			acme.DailyLimit, acme.Servers[0].Port, acme.Servers[1].Port, acme.Servers[1].TLS)
	}
	if !acme.VERPEnabled() {
		t.Error("VERP is off by default, want on")
	}
}

func TestParseRejectsInvalid(t *testing.T) {
	tests := []struct{ doc, want string }{
		{"tenants: {}", "no tenants"},
		{"tenants:\n  Acme:\n    alias_domain: example.com", "tenant id"},
		{"tenants:\n  acme: {}", "alias_domain is required"},
		{"tenants:\n  acme:\n    alias_domain: éxample.com", "ASCII"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    alias_domian: x", "alias_domian"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    daily_limit: -1", "daily_limit"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    time_zone: Mars/Olympus", "time_zone"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    servers: [{name: s, host: h, tls: maybe}]", "tls"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    servers: [{name: s}]", "host is required"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    servers: [{name: s, host: h}, {name: s, host: h}]", "used twice"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    servers: [{name: s, host: h, username: u}]", "password_file"},
		{"tenants:\n  acme:\n    alias_domain: example.com\n    api_keys: [secret]", "sha256"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc), "")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid mentioning %q", tt.doc, err, tt.want)
		}
	}
}

func TestPasswordFileIsReadAndNeverPrinted(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc := "tenants:\n  acme:\n    alias_domain: example.com\n    servers: [{name: s, host: h, username: u, password_file: pw}]"
	if err := os.WriteFile(filepath.Join(dir, "t.yaml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(filepath.Join(dir, "t.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Tenant("acme").Servers[0]
	if string(s.Password) != "s3cret" {
		t.Errorf("password = %q, want the file's first line", string(s.Password))
	}
	if got := s.Password.String(); strings.Contains(got, "s3cret") {
		t.Errorf("Secret.String() = %q leaks the password", got)
	}
}

func TestCheckAPIKey(t *testing.T) {
	c, err := Parse([]byte("tenants:\n  acme:\n    alias_domain: example.com\n    api_keys: ["+APIKeyDigest("k1")+"]"), "")
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]bool{"k1": true, "k2": false, "": false} {
		if got := c.Tenant("acme").CheckAPIKey(key); got != want {
			t.Errorf("CheckAPIKey(%q) = %v, want %v", key, got, want)
		}
	}
}
