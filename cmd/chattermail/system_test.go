package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/dkimkey"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

const testAPIKey = "test-acme-key"

// logBuffer is a testenv.Buffer.
type logBuffer = testenv.Buffer

func newLogBuffer(t testing.TB) *logBuffer {
	l := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", l.String())
		}
	})
	return l
}

// deps are the real things a system under test runs against.
type deps struct {
	natsURL    string
	redisAddr  string
	capture    *smtpcapture.Server
	configPath string
	redis      *redis.Client
	js         jetstream.JetStream
	// dns answers every lookup the system makes; tests never ask real DNS.
	dns *testenv.DNSServer
}

// resolver asks d's DNS server.
func (d *deps) resolver() resolver.Resolver { return resolver.New([]string{d.dns.Addr()}, time.Second) }

// startDeps starts an in-process NATS server, a redis-server, an SMTP
// capture, and writes a tenants file whose tenant "acme" (limit 200)
// delivers to the capture.
func startDeps(t testing.TB) *deps { return startDepsWith(t, 200, "") }

// startDepsWith is startDeps with the tenant's daily limit and, unless
// dkimAlgorithm is empty, a DKIM key of that algorithm (rsa2048, ed25519)
// for example.com.
func startDepsWith(t testing.TB, limit int, dkimAlgorithm string) *deps {
	t.Helper()
	return startDepsConfig(t, func(host string, port int) string {
		cfg := fmt.Sprintf(`tenants:
  acme:
    alias_domain: example.com
    daily_limit: %d
    api_keys: [%q]
    servers:
      - name: capture
        sequence: 10
        host: %s
        port: %d
        tls: none
`, limit, config.APIKeyDigest(testAPIKey), host, port)
		if dkimAlgorithm != "" {
			key, err := dkimkey.Generate(dkimAlgorithm)
			if err != nil {
				t.Fatal(err)
			}
			pemBytes, err := dkimkey.EncodePEM(key)
			if err != nil {
				t.Fatal(err)
			}
			keyPath := filepath.Join(t.TempDir(), "example.com.pem")
			if err := os.WriteFile(keyPath, pemBytes, 0o600); err != nil {
				t.Fatal(err)
			}
			alg := "rsa"
			if dkimAlgorithm == dkimkey.Ed25519 {
				alg = "ed25519"
			}
			cfg += fmt.Sprintf("    dkim: [{domain: example.com, algorithm: %s, key_file: %s}]\n", alg, keyPath)
		}
		return cfg
	})
}

// startDepsConfig starts NATS, redis-server, the SMTP capture and a DNS
// server, and writes the tenants file that tenants returns for the
// capture's address.
func startDepsConfig(t testing.TB, tenants func(captureHost string, capturePort int) string) *deps {
	t.Helper()
	ns := testenv.NATS(t)
	raddr := testenv.Redis(t)
	capture, err := smtpcapture.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })
	path := filepath.Join(t.TempDir(), "tenants.yaml")
	if err := os.WriteFile(path, []byte(tenants(capture.HostPort())), 0o600); err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(&redis.Options{Addr: raddr})
	t.Cleanup(func() { rc.Close() })
	nb, err := bus.Connect(ns.ClientURL(), "test", testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nb.Close)
	return &deps{natsURL: ns.ClientURL(), redisAddr: raddr, capture: capture, configPath: path, redis: rc, js: nb.JetStream(), dns: testenv.DNS(t)}
}

// startInProcess runs the four stages in this process, as "chattermail
// dev" does, and returns the HTTP API's base URL.
func startInProcess(t testing.TB, d *deps) string {
	return startPipeline(t, d, pipelineOptions{}, nil)
}

// startPipeline runs the stages in this process with o, its Redis and
// Resolver defaulting to d's, serving the HTTP API on ln (nil: a free
// port), until the test ends; it returns the API's base URL.
func startPipeline(t testing.TB, d *deps, o pipelineOptions, ln net.Listener) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p, err := proc.Start(ctx, "test", proc.Settings{NATSURL: d.natsURL, ConfigPath: d.configPath, AdminAddr: "127.0.0.1:0", LogLevel: "debug"}, newLogBuffer(t))
	if err != nil {
		t.Fatal(err)
	}
	if o.Redis == nil {
		o.Redis = d.redis
	}
	if o.Resolver == nil {
		o.Resolver = d.resolver()
	}
	pl, err := newPipeline(p, o)
	if err != nil {
		t.Fatal(err)
	}
	if ln == nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- pl.run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pipeline stopped with %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// samplePost is the example: three followers, the author among them.
const samplePost = `{
  "tenant": "acme",
  "thread": {"model": "crm.lead", "id": "42", "displayName": "Big deal"},
  "author": {"name": "Bob Seller", "email": "bob@example.com", "internal": true},
  "subject": "Contract signed",
  "bodyText": "The customer signed. Thanks everyone!",
  "bodyHtml": "<p>The customer signed. <b>Thanks everyone!</b></p>",
  "followers": [
    {"partner": {"name": "Bob Seller", "email": "bob@example.com", "internal": true}},
    {"partner": {"name": "Ann Buyer", "email": "ann@customer.example"}},
    {"partner": {"name": "Carl Manager", "email": "carl@example.com", "internal": true}}
  ]
}`

type postAnswer struct {
	PostID    string `json:"post_id"`
	MessageID string `json:"message_id"`
	Error     string `json:"error"`
}

func post(t testing.TB, base, key, body string) (int, postAnswer) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/posts", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var a postAnswer
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("POST /v1/posts answered %d with non-JSON %q", resp.StatusCode, raw)
	}
	return resp.StatusCode, a
}

// waitDrained waits until no mail is left in any work stream and the
// sender has nothing unacknowledged, so counting captured mail afterwards
// also proves that no duplicate is still on its way.
func waitDrained(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	testenv.Eventually(t, 60*time.Second, func() error {
		for _, name := range []string{bus.StreamPosts, bus.StreamCompose, bus.StreamRewritten, bus.StreamReady} {
			s, err := js.Stream(ctx, name)
			if err != nil {
				return err
			}
			info, err := s.Info(ctx)
			if err != nil {
				return err
			}
			if info.State.Msgs != 0 {
				return fmt.Errorf("%s still holds %d messages", name, info.State.Msgs)
			}
		}
		return nil
	})
}
