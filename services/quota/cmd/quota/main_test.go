package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chattermail/chattermail/platform/testenv"
)

func TestRunServesReadinessWithRedis(t *testing.T) {
	ns := testenv.NATS(t)
	mr := miniredis.RunT(t)
	mr.RequireAuth("s3cret-pw")
	cfg := filepath.Join(t.TempDir(), "chattermail.yaml")
	if err := os.WriteFile(cfg, []byte("tenants:\n  acme:\n    alias_domain: example.com\n    time_zone: Europe/Paris\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte("adm1n-t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"NATS_URL":           ns.ClientURL(),
		"CHATTERMAIL_CONFIG": cfg,
		"REDIS_URL":          "redis://:s3cret-pw@" + mr.Addr() + "/0",
		"ADMIN_TOKEN_FILE":   tokenFile,
	}
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-admin-addr", "127.0.0.1:0"}, func(k string) string { return env[k] }, &out)
	}()

	var admin string
	testenv.Eventually(t, 10*time.Second, func() error {
		for line := range strings.Lines(out.String()) {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "started" {
				admin, _ = m["admin"].(string)
				return nil
			}
		}
		return fmt.Errorf("no started line in %q", out.String())
	})
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		return nil
	})
	// The quota admin API, with and without the token.
	get := func(token string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+admin+"/quota/acme", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("adm1n-t0ken"); code != http.StatusOK || !strings.Contains(body, `"time_zone": "Europe/Paris"`) {
		t.Errorf("GET /quota/acme with the token = %d %q, want 200 and acme's status", code, body)
	}
	if code, _ := get(""); code != http.StatusUnauthorized {
		t.Errorf("GET /quota/acme without the token = %d, want 401", code)
	}

	mr.Close()
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "redis") {
		t.Errorf("/readyz with Redis down = %d %q, want 503 naming redis", code, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if strings.Contains(out.String(), "s3cret-pw") {
		t.Errorf("the Redis password was logged:\n%s", out.String())
	}
}

func TestRunRejectsAnEmptyAdminTokenFile(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{empty, filepath.Join(t.TempDir(), "missing")} {
		err := run(context.Background(), []string{"-admin-token-file", path}, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "admin-token-file") {
			t.Errorf("run with -admin-token-file %s: %v, want an error naming the flag", path, err)
		}
	}
}

func TestRunRejectsABadRedisURLWithoutShowingIt(t *testing.T) {
	for _, u := range []string{"redis://:pa ss@host:port/0", "redis://:p/ss@h:6379", "ftp://:secret@h", "redis://:secret@h/db"} {
		err := run(context.Background(), []string{"-redis-url", u}, func(string) string { return "" }, io.Discard)
		if err == nil {
			t.Errorf("run with -redis-url %q: no error", u)
			continue
		}
		if strings.Contains(err.Error(), "ss@") || strings.Contains(err.Error(), "secret") {
			t.Errorf("run with -redis-url %q: error %q shows the password", u, err)
		}
	}
}

// syncBuffer is a testenv.Buffer.
type syncBuffer = testenv.Buffer
