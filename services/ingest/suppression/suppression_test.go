package suppression_test

import (
	"context"
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/chattermail/chattermail/services/ingest/suppression"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var now = time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC)

func open(t *testing.T) *suppression.List {
	t.Helper()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	l, err := suppression.Open(context.Background(), js, suppression.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestKey(t *testing.T) {
	key := regexp.MustCompile(`^acme\.[a-z2-7]{32}$`)
	a, err := suppression.Key("acme", "Ann@Example.ORG")
	b, _ := suppression.Key("acme", "ann@example.org")
	if err != nil || a != b || !key.MatchString(a) {
		t.Errorf("Key(acme, Ann@Example.ORG) = %q, %v, want %q, the key of ann@example.org", a, err, b)
	}
	tests := []struct{ tenant, addr string }{
		{"acme", "not an address"},
		{"acme", "Ann <ann@example.org>"},
		{"ACME", "ann@example.org"},
		{"acme.x", "ann@example.org"},
	}
	for _, tt := range tests {
		if k, err := suppression.Key(tt.tenant, tt.addr); err == nil {
			t.Errorf("Key(%q, %q) = %q, want an error", tt.tenant, tt.addr, k)
		}
	}
}

func TestSuppressList(t *testing.T) {
	l := open(t)
	ctx := context.Background()
	e, created, err := l.Suppress(ctx, "acme", "Ann@Example.ORG", "5.1.1 user unknown", "bounce")
	want := suppression.Entry{Tenant: "acme", Address: "ann@example.org", Reason: "5.1.1 user unknown", Source: "bounce", AddedAt: now}
	if err != nil || !created || e != want {
		t.Fatalf("Suppress(ann) = %+v, %v, %v, want %+v, created", e, created, err, want)
	}
	// Suppressing again keeps the first entry.
	if e, created, err := l.Suppress(ctx, "acme", "ann@example.org", "complaint", "complaint"); err != nil || created || e != want {
		t.Errorf("Suppress(ann) again = %+v, %v, %v, want the first entry, not created", e, created, err)
	}
	if _, _, err := l.Suppress(ctx, "acme", "bob@example.com", "", "api"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Suppress(ctx, "globex", "carl@globex.test", "", "api"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tenant, addr string
		want         bool
	}{
		{"acme", "ANN@example.org", true},
		{"acme", "bob@example.com", true},
		{"acme", "carl@globex.test", false},
		{"globex", "ann@example.org", false},
		{"globex", "carl@globex.test", true},
	}
	for _, tt := range tests {
		if _, got, err := l.IsSuppressed(ctx, tt.tenant, tt.addr); got != tt.want || err != nil {
			t.Errorf("IsSuppressed(%s, %s) = %v, %v, want %v", tt.tenant, tt.addr, got, err, tt.want)
		}
	}
	list, err := l.Entries(ctx, "acme")
	if err != nil || len(list) != 2 || list[0].Address != "ann@example.org" || list[1].Address != "bob@example.com" {
		t.Errorf("Entries(acme) = %+v, %v, want ann and bob", list, err)
	}
	if err := l.Unsuppress(ctx, "acme", "Ann@example.org"); err != nil {
		t.Errorf("Unsuppress(ann) = %v, want nil", err)
	}
	if err := l.Unsuppress(ctx, "acme", "ann@example.org"); !errors.Is(err, suppression.ErrNotSuppressed) {
		t.Errorf("Unsuppress(ann) again = %v, want ErrNotSuppressed", err)
	}
	if err := l.Unsuppress(ctx, "acme", "carl@globex.test"); !errors.Is(err, suppression.ErrNotSuppressed) {
		t.Errorf("Unsuppress(acme, globex's address) = %v, want ErrNotSuppressed", err)
	}
	if _, found, _ := l.IsSuppressed(ctx, "acme", "ann@example.org"); found {
		t.Error("ann is still suppressed after Unsuppress")
	}
	// A cleared address can be suppressed again.
	if _, created, err := l.Suppress(ctx, "acme", "ann@example.org", "again", "api"); err != nil || !created {
		t.Errorf("Suppress(ann) after Unsuppress = created %v, %v, want created", created, err)
	}
	if list, _ := l.Entries(ctx, "globex"); len(list) != 1 || list[0].Tenant != "globex" {
		t.Errorf("Entries(globex) = %+v, want globex's one address", list)
	}
	if list, err := l.Entries(ctx, "initech"); err != nil || len(list) != 0 || list == nil {
		t.Errorf("Entries(initech) = %#v, %v, want an empty list", list, err)
	}
}
