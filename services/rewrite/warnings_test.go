package rewrite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/dkimkey"
)

func TestWarnings(t *testing.T) {
	dir := t.TempDir()
	k, _ := dkimkey.Generate(dkimkey.Ed25519)
	p, _ := dkimkey.EncodePEM(k)
	if err := os.WriteFile(filepath.Join(dir, "k.pem"), p, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		doc  string
		want []string // substrings, one per warning, in order
	}{
		{"signs for its domains", `
    dkim: [{domain: example.com, key_file: k.pem}]
    servers: [{name: s1, host: h, from_filter: example.com}]`, nil},
		{"from_filter on a domain without key", `
    dkim: [{domain: example.com, key_file: k.pem}]
    servers: [{name: s1, host: h, from_filter: "example.com, partner.org"}]`, []string{"from_filter of server s1 sends authors of partner.org"}},
		{"no key at all", `
    servers: [{name: s1, host: h, from_filter: example.com}]`, []string{"authors of example.com", "notification address notifications@example.com"}},
		{"default filter used without servers", `
    default_from_filter: other.org
    dkim: [{domain: example.com, key_file: k.pem}]`, []string{"default_from_filter sends authors of other.org"}},
		{"key for the organisational domain covers a sub-domain", `
    default_from: notifications@mail.example.com
    dkim: [{domain: example.com, key_file: k.pem}]`, nil},
	}
	for _, tt := range tests {
		doc := "tenants:\n  acme:\n    alias_domain: example.com" + tt.doc + "\n"
		if err := os.WriteFile(filepath.Join(dir, "t.yaml"), []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(filepath.Join(dir, "t.yaml"))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		r, err := CompileTenant(cfg.Tenant("acme"))
		if err != nil {
			t.Fatal(err)
		}
		got := r.Warnings()
		ok := len(got) == len(tt.want)
		for i := 0; ok && i < len(got); i++ {
			ok = strings.Contains(got[i], tt.want[i])
		}
		if !ok {
			t.Errorf("%s: Warnings() = %q, want warnings containing %q", tt.name, got, tt.want)
		}
	}
}
