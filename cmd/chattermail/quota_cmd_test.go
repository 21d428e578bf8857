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
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/chattermail/chattermail/services/quota"
	"github.com/redis/go-redis/v9"
)

// quotaCLI is a tenants file and a redis-server for "chattermail quota".
type quotaCLI struct {
	env  map[string]string
	rdb  *redis.Client
	cfg  *config.Config
	now  time.Time
	addr string
}

func newQuotaCLI(t *testing.T) *quotaCLI {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tenants.yaml")
	doc := "tenants:\n  acme:\n    alias_domain: example.com\n    daily_limit: 200\n    time_zone: Europe/Paris\n  globex:\n    alias_domain: globex.example\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return &quotaCLI{
		env: map[string]string{"CHATTERMAIL_CONFIG": path, "REDIS_URL": "redis://" + addr + "/0"},
		rdb: rdb, cfg: cfg, now: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), addr: addr,
	}
}

// run runs "chattermail quota <args>" and returns its output.
func (c *quotaCLI) run(args ...string) (string, error) {
	var out bytes.Buffer
	err := quotaCommand(context.Background(), args, func(k string) string { return c.env[k] }, &out, func() time.Time { return c.now })
	return out.String(), err
}

func TestQuotaCommandSetStatusClear(t *testing.T) {
	c := newQuotaCLI(t)
	ctx := context.Background()
	// A running service would have counted and held these.
	l := quota.NewLedger(c.rdb)
	w := quota.WindowOf(c.cfg.Tenant("acme"), c.now)
	for i := range 5 {
		if _, err := l.Admit(ctx, "acme", w, fmt.Sprintf("m%d", i), 3); err != nil {
			t.Fatal(err)
		}
	}
	notices := c.rdb.Subscribe(ctx, quota.LimitChannel)
	t.Cleanup(func() { _ = notices.Close() })
	if _, err := notices.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}

	steps := []struct {
		args []string
		want []string
	}{
		{[]string{"status", "--tenant", "acme"}, []string{
			"tenant        acme\n",
			"window        2026-11-24 (Europe/Paris), resets at 2026-11-25T00:00:00+01:00\n",
			"used          3\n",
			"limit         200 (tenants file; no runtime override)\n",
			"waiting       2 held for a later window\n",
			"next release  2026-11-24T11:00:00+01:00 (the window has room: held mail is being released)\n",
		}},
		{[]string{"set", "--tenant", "acme", "--daily", "3"}, []string{
			"acme: daily limit set to 3 at runtime (the tenants file says 200)\n",
			"limit         3 (runtime override; the tenants file says 200;",
			"next release  2026-11-25T00:00:00+01:00 (the window is full: held mail is released when the next window opens)\n",
		}},
		{[]string{"set", "--tenant=acme", "--daily=0"}, []string{
			"limit         0 (runtime override",
			"next release  none (the limit is 0: held mail waits until it is raised)\n",
		}},
		{[]string{"clear", "--tenant", "acme"}, []string{
			"acme: runtime limit cleared; the tenants file's daily_limit 200 applies\n",
			"limit         200 (tenants file; no runtime override)\n",
		}},
		{[]string{"status", "--tenant", "globex"}, []string{
			"window        2026-11-24 (UTC), resets at 2026-11-25T00:00:00Z\n",
			"used          0\n",
			"waiting       0 held for a later window\n",
			"next release  none (no mail is held)\n",
		}},
	}
	for _, st := range steps {
		out, err := c.run(st.args...)
		if err != nil {
			t.Fatalf("quota %s: %v", strings.Join(st.args, " "), err)
		}
		for _, w := range st.want {
			if !strings.Contains(out, w) {
				t.Errorf("quota %s printed:\n%s\nwant a line with %q", strings.Join(st.args, " "), out, w)
			}
		}
	}
	if v, err := c.rdb.Exists(ctx, quota.OverrideKey("acme")).Result(); err != nil || v != 0 {
		t.Errorf("override key exists after clear: %d, %v", v, err)
	}
	// Every change was announced to running services.
	for range 3 {
		m, err := notices.ReceiveMessage(ctx)
		if err != nil || m.Payload != "acme" {
			t.Fatalf("notice on %s = %v, %v; want acme", quota.LimitChannel, m, err)
		}
	}
}

func TestQuotaCommandStatusJSON(t *testing.T) {
	c := newQuotaCLI(t)
	if _, err := c.run("set", "--tenant", "acme", "--daily", "500"); err != nil {
		t.Fatal(err)
	}
	out, err := c.run("status", "--tenant", "acme", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st quota.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json printed %q: %v", out, err)
	}
	if st.Limit != 500 || st.LimitSource != quota.LimitFromOverride || st.FileLimit != 200 || st.Override == nil || *st.Override != 500 {
		t.Errorf("status --json = %+v, want limit 500 from the override", st)
	}
}

func TestQuotaCommandErrors(t *testing.T) {
	c := newQuotaCLI(t)
	down := testenv.FreePort(t)
	tests := []struct {
		args []string
		env  map[string]string // changes to c.env
		want string
	}{
		{nil, nil, "no subcommand"},
		{[]string{"raise"}, nil, `unknown subcommand "raise"`},
		{[]string{"status"}, nil, "--tenant is required"},
		{[]string{"status", "--tenant", "initech"}, nil, `unknown tenant "initech"`},
		{[]string{"set", "--tenant", "acme"}, nil, "--daily N is required"},
		{[]string{"set", "--tenant", "acme", "--daily", "-3"}, nil, "--daily N is required"},
		{[]string{"set", "--tenant", "acme", "--daily", "2000000000"}, nil, "a daily limit must be an integer from 0"},
		{[]string{"status", "--tenant", "acme", "--daily", "5"}, nil, "--daily belongs to quota set"},
		{[]string{"status", "--tenant", "acme", "extra"}, nil, `unexpected argument "extra"`},
		{[]string{"status", "--tenant", "acme"}, map[string]string{"REDIS_URL": ""}, "REDIS_URL (or --redis-url) is required"},
		{[]string{"status", "--tenant", "acme"}, map[string]string{"REDIS_URL": "redis://:pa ss@host:port/0"}, "not a valid URL"},
		{[]string{"status", "--tenant", "acme"}, map[string]string{"REDIS_URL": fmt.Sprintf("redis://127.0.0.1:%d/0", down)}, "quota: ledger"},
		{[]string{"status", "--tenant", "acme"}, map[string]string{"CHATTERMAIL_CONFIG": "/nonexistent.yaml"}, "config"},
	}
	for _, tt := range tests {
		saved := map[string]string{}
		for k, v := range tt.env {
			saved[k] = c.env[k]
			c.env[k] = v
		}
		_, err := c.run(tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("quota %v = %v, want an error mentioning %q", tt.args, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "pa ss") {
			t.Errorf("quota %v: error %q shows the password", tt.args, err)
		}
		for k, v := range saved {
			c.env[k] = v
		}
	}
	if out, err := c.run("help"); err != nil || !strings.Contains(out, "chattermail quota set    --tenant T --daily N") {
		t.Errorf("quota help = %q, %v", out, err)
	}
}
