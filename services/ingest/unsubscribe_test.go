package ingest_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/services/ingest"
)

func TestUnsubscribeToken(t *testing.T) {
	key := []byte(testUnsubscribeKey)
	tests := []ingest.Unsubscription{
		{Tenant: "acme", Model: "crm.lead", ThreadID: "42", Address: "ann@example.org"},
		{Tenant: "acme", Model: "helpdesk.ticket", ThreadID: "7/b Ü\x01?", Address: "ünï@example.org"},
	}
	for _, u := range tests {
		tok := ingest.UnsubscribeToken(key, u)
		if strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") != "" {
			t.Errorf("UnsubscribeToken(%+v) = %q, want only URL-safe characters", u, tok)
		}
		got, err := ingest.ParseUnsubscribeToken(key, tok)
		if err != nil || got != u {
			t.Errorf("ParseUnsubscribeToken(UnsubscribeToken(%+v)) = %+v, %v, want the same and nil", u, got, err)
		}
	}
	good := ingest.UnsubscribeToken(key, tests[0])
	payload, mac, _ := strings.Cut(good, ".")
	other := ingest.UnsubscribeToken(key, ingest.Unsubscription{Tenant: "globex", Model: "crm.lead", ThreadID: "42", Address: "ann@example.org"})
	otherPayload, _, _ := strings.Cut(other, ".")
	bad := []struct{ name, token string }{
		{"another key", ingest.UnsubscribeToken([]byte("some other key of at least 32 bytes"), tests[0])},
		{"payload of another token", otherPayload + "." + mac},
		{"no MAC", payload},
		{"empty", ""},
		{"not base64", "!!!.???"},
		{"truncated MAC", payload + "." + mac[:10]},
	}
	for _, tt := range bad {
		if got, err := ingest.ParseUnsubscribeToken(key, tt.token); !errors.Is(err, ingest.ErrBadUnsubscribeToken) {
			t.Errorf("ParseUnsubscribeToken(%s) = %+v, %v, want ErrBadUnsubscribeToken", tt.name, got, err)
		}
	}
	if got, want := ingest.UnsubscribeURL("https://cm.example.com/", key, tests[0]), "https://cm.example.com/v1/unsubscribe/"+good; got != want {
		t.Errorf("UnsubscribeURL = %q, want %q", got, want)
	}
}

func TestListID(t *testing.T) {
	tests := []struct{ model, want string }{
		{"crm.lead", `"crm.lead" <crm.lead.example.com>`},
		{"Helpdesk Ticket", `"Helpdesk Ticket" <helpdesk.ticket.example.com>`},
		{`sale."order"`, `"sale.\"order\"" <sale.order.example.com>`},
		{"projet.tâche", `<projet.t.che.example.com>`},
		{"...", `"..." <thread.example.com>`},
	}
	for _, tt := range tests {
		if got := ingest.ListID(tt.model, "example.com"); got != tt.want {
			t.Errorf("ListID(%q, example.com) = %s, want %s", tt.model, got, tt.want)
		}
	}
}

func TestLoadUnsubscribeKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want string
		wantErr          bool
	}{
		{"no file set", "", "", false},
		{"a key with a newline", write("ok", "  kLt0bq2cU3J6Yb0jP0nq4xH1u7mW2sQ9aZ8=\n"), "kLt0bq2cU3J6Yb0jP0nq4xH1u7mW2sQ9aZ8=", false},
		{"too short", write("short", "secret\n"), "", true},
		{"missing file", filepath.Join(dir, "nope"), "", true},
	}
	for _, tt := range tests {
		got, err := ingest.LoadUnsubscribeKey(tt.path)
		if string(got) != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("LoadUnsubscribeKey(%s) = %q, %v, want %q (error %v)", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNewChecksLinkSettings(t *testing.T) {
	e := newEnv(t, func(o *ingest.Options) { o.UnsubscribeKey = nil })
	if !strings.Contains(e.logs.String(), "UNSUBSCRIBE_KEY_FILE is not set") {
		t.Errorf("New without an unsubscribe key logged %s, want a warning naming UNSUBSCRIBE_KEY_FILE", e.logs.String())
	}
	tests := []struct {
		name   string
		change func(*ingest.Options)
	}{
		{"short key", func(o *ingest.Options) { o.UnsubscribeKey = []byte("short") }},
		{"relative public URL", func(o *ingest.Options) { o.PublicURL = "chattermail.example.com" }},
		{"public URL with a query", func(o *ingest.Options) { o.PublicURL = "https://cm.example.com/?a=b" }},
		{"public URL of another scheme", func(o *ingest.Options) { o.PublicURL = "ftp://cm.example.com" }},
	}
	for _, tt := range tests {
		o := ingest.Options{Bus: e.bus, Config: e.cfg, Log: slog.New(slog.DiscardHandler), UnsubscribeKey: []byte(testUnsubscribeKey)}
		tt.change(&o)
		if _, err := ingest.New(o); err == nil {
			t.Errorf("New(%s) = nil error, want one", tt.name)
		}
	}
}
