package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/platform/testenv"
)

func TestSuppressionCommand(t *testing.T) {
	ns := testenv.NATS(t)
	env := func(k string) string {
		if k == "NATS_URL" {
			return ns.ClientURL()
		}
		return ""
	}
	ctx := context.Background()
	cmd := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, append([]string{"suppression"}, args...), env, &out)
		return out.String(), err
	}
	tests := []struct {
		args    []string
		want    string
		wantErr bool
	}{
		{[]string{"add", "--tenant", "acme", "--address", "Ann@Customer.example", "--reason", "asked"}, "suppressed ann@customer.example", false},
		{[]string{"add", "--tenant", "acme", "--address", "ann@customer.example"}, "already suppressed", false},
		{[]string{"add", "--tenant", "acme", "--address", "carl@example.com"}, "suppressed carl@example.com", false},
		{[]string{"add", "--tenant", "other", "--address", "dora@example.com"}, "suppressed dora", false},
		{[]string{"list", "--tenant", "acme"}, "ann@customer.example  operator", false},
		{[]string{"clear", "--tenant", "acme", "--address", "ann@customer.example"}, "removed ann@customer.example", false},
		{[]string{"clear", "--tenant", "acme", "--address", "ann@customer.example"}, "", true},
		{[]string{"clear", "--tenant", "acme"}, "removed 1 addresses", false},
		{[]string{"list", "--tenant", "other"}, "dora@example.com", false},
		{[]string{"add", "--tenant", "acme"}, "", true},
		{[]string{"add", "--tenant", "acme", "--address", "not an address"}, "", true},
		{[]string{"list"}, "", true},
		{[]string{"list", "--tenant", "Bad Tenant"}, "", true},
		{[]string{"frobnicate"}, "", true},
	}
	for _, tt := range tests {
		out, err := cmd(tt.args...)
		if (err != nil) != tt.wantErr || !strings.Contains(out, tt.want) {
			t.Errorf("suppression %v = %q, %v; want output containing %q, error %v", tt.args, out, err, tt.want, tt.wantErr)
		}
	}
	if out, _ := cmd("list", "--tenant", "acme"); strings.Contains(out, "@") {
		t.Errorf("after clear, list = %q, want no addresses", out)
	}
}
