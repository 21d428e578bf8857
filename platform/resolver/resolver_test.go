package resolver_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/testenv"
)

func TestLookups(t *testing.T) {
	srv := testenv.DNS(t,
		`_dmarc.example.com. 300 IN TXT "v=DMARC1; " "p=reject"`,
		`example.com. 600 IN MX 20 mx2.example.com.`,
		`example.com. 60 IN MX 10 mx1.example.com.`,
		`mx1.example.com. 120 IN A 127.0.0.1`,
		`mx1.example.com. 90 IN AAAA ::1`,
	)
	srv.Fail("broken.example.com")
	srv.Drop("slow.example.com")
	r := resolver.New([]string{srv.Addr()}, 300*time.Millisecond)
	ctx := context.Background()

	txt, ttl, err := r.TXT(ctx, "_dmarc.example.com")
	if err != nil || len(txt) != 1 || txt[0] != "v=DMARC1; p=reject" || ttl != 300*time.Second {
		t.Errorf("TXT(_dmarc.example.com) = %q, %s, %v; want [v=DMARC1; p=reject], 5m0s, nil", txt, ttl, err)
	}
	mx, ttl, err := r.MX(ctx, "example.com")
	if err != nil || len(mx) != 2 || mx[0].Host != "mx1.example.com." || ttl != time.Minute {
		t.Errorf("MX(example.com) = %v, %s, %v; want mx1 first, TTL 1m0s", mx, ttl, err)
	}
	ips, ttl, err := r.IP(ctx, "mx1.example.com")
	if err != nil || len(ips) != 2 || ttl != 90*time.Second {
		t.Errorf("IP(mx1.example.com) = %v, %s, %v; want two addresses, TTL 1m30s", ips, ttl, err)
	}

	errs := []struct {
		name string
		fn   func() error
		want error
	}{
		{"TXT of a missing name", func() error { _, _, err := r.TXT(ctx, "nope.example.com"); return err }, resolver.ErrNotFound},
		{"TXT of a name with only MX", func() error { _, _, err := r.TXT(ctx, "example.com"); return err }, resolver.ErrNotFound},
		{"SERVFAIL", func() error { _, _, err := r.TXT(ctx, "broken.example.com"); return err }, resolver.ErrTemporary},
		{"timeout", func() error { _, _, err := r.TXT(ctx, "slow.example.com"); return err }, resolver.ErrTemporary},
		{"no servers", func() error { _, _, err := resolver.New(nil, 0).TXT(ctx, "example.com"); return err }, resolver.ErrTemporary},
	}
	for _, e := range errs {
		if err := e.fn(); !errors.Is(err, e.want) {
			t.Errorf("%s: err = %v, want %v", e.name, err, e.want)
		}
	}
	if n := srv.Queries("_dmarc.example.com"); n != 1 {
		t.Errorf("server saw %d queries for _dmarc.example.com, want 1", n)
	}
}
