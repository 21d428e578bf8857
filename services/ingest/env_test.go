package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

const (
	acmeKey   = "acme-secret-api-key"
	globexKey = "globex-secret-api-key"
	// sharedKey is valid for both tenants.
	sharedKey = "shared-secret-api-key"
)

// testUnsubscribeKey signs the unsubscribe links of the test services.
const testUnsubscribeKey = "0123456789abcdef0123456789abcdef-test"

// clock is the fixed time every test service sees.
var clock = time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC)

// env is one ingest service on its own in-process NATS server, with its
// HTTP API on a real loopback listener.
type env struct {
	t    testing.TB
	nats *server.Server
	bus  *bus.Bus
	cfg  *config.Config
	svc  *ingest.Service
	http *httptest.Server
	logs *syncBuffer
}

func newEnv(t testing.TB, change ...func(*ingest.Options)) *env {
	t.Helper()
	ns := testenv.NATS(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := bus.Connect(ns.ClientURL(), "ingest-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := b.EnsureStreams(context.Background(), bus.StreamOptions{Memory: true}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, `
tenants:
  acme:
    alias_domain: example.com
    api_keys: [%q, %q]
  globex:
    alias_domain: globex.test
    api_keys: [%q, %q]
`, config.APIKeyDigest(acmeKey), config.APIKeyDigest(sharedKey), config.APIKeyDigest(globexKey), config.APIKeyDigest(sharedKey)), "")
	if err != nil {
		t.Fatal(err)
	}
	o := ingest.Options{Bus: b, Config: cfg, Log: log, Now: func() time.Time { return clock },
		PublicURL: "https://chattermail.example.com", UnsubscribeKey: []byte(testUnsubscribeKey)}
	for _, c := range change {
		c(&o)
	}
	svc, err := ingest.New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(svc.Handler())
	t.Cleanup(hs.Close)
	return &env{t: t, nats: ns, bus: b, cfg: cfg, svc: svc, http: hs, logs: logs}
}

// noWait makes the HTTP API answer as soon as a post is stored, for tests
// that do not run the fan-out.
func noWait(o *ingest.Options) { o.FanOutWait = -1 }

// run starts the POSTS consumer until the test ends.
func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.svc.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
	})
}

// post sends POST /v1/posts with key as bearer token (none when empty)
// and extra headers as name, value pairs.
func (e *env) post(key string, body io.Reader, header ...string) (int, http.Header, string) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.http.URL+"/v1/posts", body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// publishPost stores p on chatter.post.<tenant> as another service would,
// without Nats-Msg-Id, so that publishing it twice stores it twice.
func (e *env) publishPost(subject string, data []byte) {
	e.t.Helper()
	if _, err := e.bus.JetStream().PublishMsg(context.Background(), &nats.Msg{Subject: subject, Data: data}); err != nil {
		e.t.Fatal(err)
	}
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitPostsDone waits until the POSTS work queue is empty: every post has
// been acknowledged (after all its publishes) or dead-lettered.
func (e *env) waitPostsDone() {
	e.t.Helper()
	testenv.Eventually(e.t, 10*time.Second, func() error {
		if n := len(e.msgs(bus.StreamPosts, "")); n != 0 {
			return fmt.Errorf("%d posts still in POSTS", n)
		}
		return nil
	})
}

// msgs returns the messages stored in stream whose subject is subject, or
// starts with subject's prefix when it ends in ">" (every one when empty).
func (e *env) msgs(stream, subject string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := context.Background()
	st, err := e.bus.JetStream().Stream(ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		prefix, wild := strings.CutSuffix(subject, ">")
		if subject == "" || m.Subject == subject || wild && strings.HasPrefix(m.Subject, prefix) {
			out = append(out, m)
		}
	}
	return out
}

func decode[T any, P interface {
	*T
	proto.Message
}](t testing.TB, msgs []*jetstream.RawStreamMsg) []P {
	t.Helper()
	out := make([]P, 0, len(msgs))
	for _, m := range msgs {
		var v P = new(T)
		if err := proto.Unmarshal(m.Data, v); err != nil {
			t.Fatalf("message %d on %s: %v", m.Sequence, m.Subject, err)
		}
		out = append(out, v)
	}
	return out
}

// assertLogsClean checks that no log line holds a secret or a body.
func (e *env) assertLogsClean(secrets ...string) {
	e.t.Helper()
	logs := e.logs.String()
	for _, s := range append(secrets, acmeKey, globexKey, sharedKey) {
		if strings.Contains(logs, s) {
			e.t.Errorf("logs contain %q, which must never be logged:\n%s", s, logs)
		}
	}
}

// syncBuffer is a testenv.Buffer.
type syncBuffer = testenv.Buffer
