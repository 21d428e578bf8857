package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/testenv"
)

// lockedBuffer is a testenv.Buffer.
type lockedBuffer = testenv.Buffer

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestRunStartsAndStops(t *testing.T) {
	ns := testenv.NATS(t)
	cfg := filepath.Join(t.TempDir(), "tenants.yaml")
	if err := os.WriteFile(cfg, []byte("tenants:\n  acme:\n    alias_domain: example.com\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-admin-addr", "127.0.0.1:0", "-retry-base", "1m"}, env(map[string]string{
			"NATS_URL":           ns.ClientURL(),
			"CHATTERMAIL_CONFIG": cfg,
			"RELAYHOST":          "127.0.0.1:2525",
			"SENDER_WORKERS":     "2",
		}), &out)
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(out.String(), `"msg":"started"`) {
			return errors.New("not started")
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}

func TestRunRejectsBadSettings(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, map[string]string{"SENDER_WORKERS": "many"}, "SENDER_WORKERS"},
		{nil, map[string]string{"SENDER_MAX_LIFETIME": "5 days"}, "SENDER_MAX_LIFETIME"},
		{[]string{"-retry-base", "soon"}, nil, "retry-base"},
	}
	for _, tt := range tests {
		var out lockedBuffer
		err := run(context.Background(), tt.args, env(tt.env), &out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q, %v) = %v, want an error about %s", tt.args, tt.env, err, tt.want)
		}
	}
}
