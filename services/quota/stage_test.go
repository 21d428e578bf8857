package quota

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// fakeClock is the injected clock of the stage tests: it stands still
// until the test moves it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var testNow = utc("2026-11-24T10:00:00Z")

// env is what quota services under test share: a real NATS server, a real
// redis-server, a tenants file and a clock.
type env struct {
	bus       *bus.Bus
	rdb       *redis.Client
	redisAddr string
	cfg       *config.Config
	clock     *fakeClock
	logs      *lockedBuffer
}

// tenantYAML is a tenants file with tenant acme at limit and zone ("" for
// UTC) and more lines for acme (indented by 4) or the file.
func tenantYAML(limit int, zone string, more ...string) string {
	doc := fmt.Sprintf("tenants:\n  acme:\n    alias_domain: example.com\n    daily_limit: %d\n", limit)
	if zone != "" {
		doc += "    time_zone: " + zone + "\n"
	}
	for _, m := range more {
		doc += m + "\n"
	}
	return doc
}

// newEnv starts NATS (streams in memory) and, when redisAddr is "", a
// redis-server.
func newEnv(t testing.TB, tenants, redisAddr string) *env {
	t.Helper()
	ns := testenv.NATS(t)
	b, err := bus.Connect(ns.ClientURL(), "quota-test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := b.EnsureStreams(context.Background(), bus.StreamOptions{Memory: true}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(tenants), "")
	if err != nil {
		t.Fatal(err)
	}
	if redisAddr == "" {
		redisAddr = testenv.Redis(t)
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond, ContextTimeoutEnabled: true, PoolSize: 32})
	t.Cleanup(func() { _ = rdb.Close() })
	return &env{bus: b, rdb: rdb, redisAddr: redisAddr, cfg: cfg, clock: &fakeClock{t: testNow}, logs: &lockedBuffer{}}
}

// start runs a quota service on e until the test ends: one worker (mails
// are counted in the order they were published), a 10ms tick and short
// retry backoff; mod changes the options.
func (e *env) start(t testing.TB, mod func(*Options)) *Service {
	t.Helper()
	o := Options{
		Bus: e.bus, Config: e.cfg, Redis: e.rdb, Workers: 1,
		Log:          slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:          e.clock.Now,
		Tick:         10 * time.Millisecond,
		RetryBackoff: bus.ExponentialBackoff(20*time.Millisecond, 200*time.Millisecond),
		RedisTimeout: 300 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	svc, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// The durable consumer exists once Run has started consuming.
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := e.bus.JetStream().Consumer(context.Background(), bus.StreamRewritten, Stage)
		return err
	})
	return svc
}

func mail(id string) *cmv1.OutboundMail { return mailTo(id, id+"@example.org") }

func mailTo(id, rcpt string) *cmv1.OutboundMail {
	return &cmv1.OutboundMail{
		MailId:    id,
		Tenant:    "acme",
		PostId:    "p1",
		Recipient: &cmv1.Partner{Email: rcpt},
		Subject:   "Big deal",
		BodyText:  "The customer signed.",
	}
}

// rewritten publishes m as rewrite would, under msgID ("" for none).
func (e *env) rewritten(t testing.TB, m *cmv1.OutboundMail, msgID string) {
	t.Helper()
	if err := e.bus.Publish(context.Background(), bus.Subject(bus.RewrittenPrefix, m.GetTenant()), m, msgID); err != nil {
		t.Fatal(err)
	}
}

// publishMails publishes mails m0000 … as rewrite would.
func (e *env) publishMails(t testing.TB, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		id := fmt.Sprintf("m%04d", i)
		e.rewritten(t, mail(id), bus.MsgID(id, "rewrite"))
	}
}

// msgs returns the messages stored in stream whose subject is subject.
func (e *env) msgs(t testing.TB, stream, subject string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := e.bus.JetStream().Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject == subject {
			out = append(out, m)
		}
	}
	return out
}

// count returns how many messages stream holds.
func (e *env) count(t testing.TB, stream string) uint64 {
	t.Helper()
	s, err := e.bus.JetStream().Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// ready returns the mails on mail.ready.acme, in stream order.
func (e *env) ready(t testing.TB) []*cmv1.OutboundMail {
	t.Helper()
	var out []*cmv1.OutboundMail
	for _, raw := range e.msgs(t, bus.StreamReady, "mail.ready.acme") {
		var m cmv1.OutboundMail
		if err := proto.Unmarshal(raw.Data, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, &m)
	}
	return out
}

// waitReady waits until mail.ready.acme holds n mails.
func (e *env) waitReady(t testing.TB, n uint64) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		if got := e.count(t, bus.StreamReady); got != n {
			return fmt.Errorf("READY holds %d mails, want %d", got, n)
		}
		return nil
	})
}

// mailEvents returns the MailEvents of outcome o.
func (e *env) mailEvents(t testing.TB, outcome string) []*cmv1.MailEvent {
	t.Helper()
	var out []*cmv1.MailEvent
	for _, raw := range e.msgs(t, bus.StreamEvents, "events.mail.acme."+outcome) {
		var ev cmv1.MailEvent
		if err := proto.Unmarshal(raw.Data, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, &ev)
	}
	return out
}

// quotaEvents returns the QuotaEvents of acme.
func (e *env) quotaEvents(t testing.TB) []*cmv1.QuotaEvent {
	t.Helper()
	var out []*cmv1.QuotaEvent
	for _, raw := range e.msgs(t, bus.StreamEvents, "events.quota.acme") {
		var q cmv1.QuotaEvent
		if err := proto.Unmarshal(raw.Data, &q); err != nil {
			t.Fatal(err)
		}
		out = append(out, &q)
	}
	return out
}

// used returns acme's count in window.
func (e *env) used(t testing.TB, window string) int64 {
	t.Helper()
	n, err := e.rdb.Get(context.Background(), CounterKey("acme", window)).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	return n
}

func (e *env) consumer(t testing.TB) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := e.bus.JetStream().Consumer(context.Background(), bus.StreamRewritten, Stage)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// settled waits until the stage has acked acked inputs and holds pending
// more unacknowledged.
func (e *env) settled(t testing.TB, acked uint64, pending int) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		info := e.consumer(t)
		if info.AckFloor.Stream != acked || info.NumAckPending != pending || info.NumPending != 0 {
			return fmt.Errorf("consumer quota: ack floor %d, %d pending ack, %d not delivered; want %d, %d, 0",
				info.AckFloor.Stream, info.NumAckPending, info.NumPending, acked, pending)
		}
		return nil
	})
}

// status reads acme's Status at the clock's time.
func (e *env) status(t testing.TB) Status {
	t.Helper()
	st, err := NewLedger(e.rdb).Status(context.Background(), e.cfg.Tenant("acme"), e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// looked waits until svc's scheduler has made a whole pass over every
// tenant after this call: what it has not released by then, it does not
// release at this clock time.
func looked(t testing.TB, svc *Service) {
	t.Helper()
	for range 2 {
		n := svc.sched.passes.Load()
		for _, id := range svc.o.Config.IDs() {
			svc.sched.kick(id)
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			if got := svc.sched.passes.Load(); got < n+int64(len(svc.o.Config.IDs())) {
				return fmt.Errorf("%d scheduler passes, waiting for %d", got, n+int64(len(svc.o.Config.IDs())))
			}
			return nil
		})
	}
}

// redisServer is a redis-server that persists every write (AOF, fsync
// always) and can be killed and started again on the same port and data.
type redisServer struct {
	t    testing.TB
	dir  string
	port int
	cmd  *exec.Cmd
}

func startPersistentRedis(t testing.TB) *redisServer {
	t.Helper()
	r := &redisServer{t: t, dir: t.TempDir(), port: testenv.FreePort(t)}
	r.start()
	t.Cleanup(func() {
		if r.cmd != nil {
			r.kill()
		}
	})
	return r
}

func (r *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

func (r *redisServer) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "yes", "--appendfsync", "always",
		"--dir", r.dir, "--dbfilename", "dump.rdb", "--loglevel", "warning")
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, io.Discard
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	testenv.Eventually(r.t, 10*time.Second, func() error {
		c := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1})
		defer c.Close()
		return c.Ping(context.Background()).Err()
	})
}

// kill ends the server with SIGKILL, as a crash would.
func (r *redisServer) kill() {
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	_ = r.cmd.Wait()
	r.cmd = nil
}

// aofFiles returns the server's append-only files (a test's sanity check
// that it persists).
func (r *redisServer) aofFiles() []string {
	m, _ := filepath.Glob(filepath.Join(r.dir, "appendonlydir", "*"))
	return m
}

// lockedBuffer collects JSON log lines from concurrent handlers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// find returns the first log line whose msg is msg.
func (b *lockedBuffer) find(t testing.TB, msg string) map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for line := range strings.Lines(b.buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err == nil && m["msg"] == msg {
			return m
		}
	}
	t.Fatalf("no log line %q in:\n%s", msg, b.buf.String())
	return nil
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
