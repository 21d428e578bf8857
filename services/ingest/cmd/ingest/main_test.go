package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// run wires the service from flags and environment: the HTTP API accepts
// a post, the consumer fans it out, and cancelling the context stops
// everything cleanly.
func TestRun(t *testing.T) {
	ns := testenv.NATS(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "tenants.yaml")
	cfg := fmt.Sprintf("tenants:\n  acme:\n    alias_domain: example.com\n    api_keys: [%q]\n", config.APIKeyDigest("k"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	env := map[string]string{"NATS_URL": ns.ClientURL(), "CHATTERMAIL_CONFIG": cfgPath, "HTTP_ADDR": httpAddr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-admin-addr", "127.0.0.1:0"}, func(k string) string { return env[k] }, &out)
	}()

	body := `{"tenant":"acme","thread":{"model":"crm.lead","id":"42"},"author":{"email":"bob@example.com"},` +
		`"subject":"Hello","followers":[{"partner":{"email":"ann@example.org"}}]}`
	testenv.Eventually(t, 10*time.Second, func() error {
		req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/v1/posts", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer k")
		req.Header.Set("Idempotency-Key", "once")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("POST /v1/posts = %d, want 202", resp.StatusCode)
		}
		return nil
	})

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	testenv.Eventually(t, 10*time.Second, func() error {
		st, err := js.Stream(ctx, "COMPOSE")
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 1 {
			return fmt.Errorf("COMPOSE holds %d mails, want 1", info.State.Msgs)
		}
		return nil
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop after cancel")
	}
	if !strings.Contains(out.String(), "post fanned out") {
		t.Errorf("log has no fan-out line:\n%s", out.String())
	}
}

func TestRunBadFlag(t *testing.T) {
	err := run(context.Background(), []string{"-no-such-flag"}, func(string) string { return "" }, &bytes.Buffer{})
	if err == nil {
		t.Error("run(-no-such-flag) = nil, want an error")
	}
	err = run(context.Background(), []string{"-http-addr", "256.0.0.1:1"}, func(string) string { return "" }, &bytes.Buffer{})
	if err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("run(-http-addr 256.0.0.1:1) = %v, want a listen error", err)
	}
	short := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(short, []byte("too short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"UNSUBSCRIBE_KEY_FILE": short}
	err = run(context.Background(), nil, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "unsubscribe key") {
		t.Errorf("run with UNSUBSCRIBE_KEY_FILE of 9 bytes = %v, want an unsubscribe key error", err)
	}
}

// lockedBuffer is a testenv.Buffer.
type lockedBuffer = testenv.Buffer
