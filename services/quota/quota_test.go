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
	"strconv"
	"strings"
	"sync"
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

// stage is a running quota stage on a real NATS server and a real
// redis-server, with a fixed clock.
type stage struct {
	bus       *bus.Bus
	rdb       *redis.Client
	redisAddr string
	svc       *Service
	now       time.Time
	logs      *lockedBuffer
}

var testNow = utc("2026-11-24T10:00:00Z")

// startStage starts the stage for tenant acme (daily limit) with one
// worker, so mails are counted in the order they were published.
func startStage(t *testing.T, limit int) *stage {
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
	cfg, err := config.Parse(fmt.Appendf(nil, "tenants:\n  acme:\n    alias_domain: example.com\n    daily_limit: %d\n", limit), "")
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	logs := &lockedBuffer{}
	st := &stage{bus: b, rdb: rdb, redisAddr: addr, now: testNow, logs: logs}
	st.svc, err = New(Options{
		Bus: b, Config: cfg, Redis: rdb, Workers: 1,
		Log: slog.New(slog.NewJSONHandler(logs, nil)),
		Now: func() time.Time { return st.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// The durable consumer exists once Run has started consuming.
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := b.JetStream().Consumer(context.Background(), bus.StreamRewritten, Stage)
		return err
	})
	return st
}

func mail(id string) *cmv1.OutboundMail {
	return &cmv1.OutboundMail{
		MailId:    id,
		Tenant:    "acme",
		PostId:    "p1",
		Recipient: &cmv1.Partner{Email: id + "@example.org"},
		Subject:   "Big deal",
	}
}

// rewritten publishes m as rewrite would, under msgID ("" for none).
func (st *stage) rewritten(t *testing.T, m *cmv1.OutboundMail, msgID string) {
	t.Helper()
	if err := st.bus.Publish(context.Background(), bus.Subject(bus.RewrittenPrefix, m.GetTenant()), m, msgID); err != nil {
		t.Fatal(err)
	}
}

// msgs returns the messages stored in stream whose subject is subject.
func (st *stage) msgs(t *testing.T, stream, subject string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := st.bus.JetStream().Stream(ctx, stream)
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

func (st *stage) ready(t *testing.T) []*cmv1.OutboundMail {
	t.Helper()
	var out []*cmv1.OutboundMail
	for _, raw := range st.msgs(t, bus.StreamReady, "mail.ready.acme") {
		var m cmv1.OutboundMail
		if err := proto.Unmarshal(raw.Data, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, &m)
	}
	return out
}

func (st *stage) used(t *testing.T) int64 {
	t.Helper()
	n, err := st.rdb.Get(context.Background(), CounterKey("acme", "2026-11-24")).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	return n
}

func (st *stage) consumer(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := st.bus.JetStream().Consumer(context.Background(), bus.StreamRewritten, Stage)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// settled waits until the stage has acked n inputs and holds pending more.
func (st *stage) settled(t *testing.T, acked uint64, pending int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() error {
		info := st.consumer(t)
		if info.AckFloor.Stream != acked || info.NumAckPending != pending || info.NumPending != 0 {
			return fmt.Errorf("consumer quota: ack floor %d, %d pending ack, %d not delivered; want %d, %d, 0",
				info.AckFloor.Stream, info.NumAckPending, info.NumPending, acked, pending)
		}
		return nil
	})
}

func TestStageGrantsUpToTheLimitAndHoldsTheRest(t *testing.T) {
	st := startStage(t, 2)
	for _, id := range []string{"m1", "m2", "m3"} {
		st.rewritten(t, mail(id), bus.MsgID(id, "rewrite"))
	}
	// m1 and m2 are acked; m3 waits, unacked, for the next window.
	st.settled(t, 2, 1)

	ready := st.ready(t)
	if len(ready) != 2 {
		t.Fatalf("%d messages on mail.ready.acme, want 2", len(ready))
	}
	for i, m := range ready {
		q := m.GetQuota()
		wantID := fmt.Sprintf("m%d", i+1)
		if m.GetMailId() != wantID || q.GetWindow() != "2026-11-24" || q.GetUsed() != int64(i+1) ||
			q.GetLimit() != 2 || !q.GetGrantedAt().AsTime().Equal(testNow) || q.GetHeldUntil() != nil {
			t.Errorf("ready[%d] = %s with grant %v, want %s with window 2026-11-24, used %d, limit 2, granted at %s",
				i, m.GetMailId(), q, wantID, i+1, testNow)
		}
	}
	if n := st.used(t); n != 2 {
		t.Errorf("counter = %d, want 2", n)
	}
	if n := len(st.msgs(t, bus.StreamRewritten, "mail.rewritten.acme")); n != 1 {
		t.Errorf("REWRITTEN holds %d mails, want the held one", n)
	}

	held := st.msgs(t, bus.StreamEvents, "events.mail.acme.held")
	if len(held) != 1 {
		t.Fatalf("%d held events, want 1", len(held))
	}
	var ev cmv1.MailEvent
	if err := proto.Unmarshal(held[0].Data, &ev); err != nil {
		t.Fatal(err)
	}
	release := utc("2026-11-25T00:00:00Z")
	if ev.GetMailId() != "m3" || ev.GetOutcome() != cmv1.Outcome_OUTCOME_HELD || ev.GetStage() != Stage ||
		!ev.GetReleaseAt().AsTime().Equal(release) || !ev.GetAt().AsTime().Equal(testNow) ||
		ev.GetRecipient() != "m3@example.org" || !strings.Contains(ev.GetReason(), "daily limit of 2") {
		t.Errorf("held event = %v, want m3 held by quota until %s", &ev, release)
	}

	// Limit 2: the second grant reaches both 80 % and 100 %.
	var percents []int32
	for _, raw := range st.msgs(t, bus.StreamEvents, "events.quota.acme") {
		var q cmv1.QuotaEvent
		if err := proto.Unmarshal(raw.Data, &q); err != nil {
			t.Fatal(err)
		}
		if q.GetWindow() != "2026-11-24" || q.GetUsed() != 2 || q.GetLimit() != 2 || !q.GetResetsAt().AsTime().Equal(release) {
			t.Errorf("quota event = %v", &q)
		}
		percents = append(percents, q.GetPercent())
	}
	if fmt.Sprint(percents) != "[80 100]" {
		t.Errorf("quota events for percents %v, want [80 100]", percents)
	}

	line := st.logs.find(t, "mail held: daily limit reached")
	if line["level"] != "INFO" || line["tenant"] != "acme" || line["mail_id"] != "m3" || line["release_at"] != "2026-11-25T00:00:00Z" {
		t.Errorf("held log line = %v, want info with tenant, mail_id and release_at", line)
	}
}

func TestStageCountsARepeatedMailOnce(t *testing.T) {
	st := startStage(t, 2)
	// Two copies in REWRITTEN (no Nats-Msg-Id, so the stream keeps both),
	// as after a crash of rewrite outside the duplicate window.
	st.rewritten(t, mail("m1"), "")
	st.rewritten(t, mail("m1"), "")
	st.settled(t, 2, 0)
	if ready := st.ready(t); len(ready) != 1 || ready[0].GetQuota().GetUsed() != 1 {
		t.Errorf("mail.ready.acme holds %d messages (%v), want one with used 1", len(ready), ready)
	}
	if n := st.used(t); n != 1 {
		t.Errorf("counter = %d, want 1", n)
	}
	if n := len(st.msgs(t, bus.StreamEvents, "events.quota.acme")); n != 0 {
		t.Errorf("%d quota events at 50 %%, want none", n)
	}
}

func TestStageFailsClosedWithoutRedis(t *testing.T) {
	st := startStage(t, 2)
	if err := st.svc.Ready(); err != nil {
		t.Fatalf("Ready with Redis up: %v", err)
	}
	_ = st.rdb.ShutdownNoSave(context.Background()).Err() // the server hangs up
	testenv.Eventually(t, 10*time.Second, func() error {
		if st.svc.Ready() == nil {
			return errors.New("Ready still reports no error")
		}
		return nil
	})

	st.rewritten(t, mail("m1"), bus.MsgID("m1", "rewrite"))
	// Tried, failed, redelivered: still pending, never published.
	testenv.Eventually(t, 10*time.Second, func() error {
		if info := st.consumer(t); info.NumRedelivered < 1 || info.NumAckPending != 1 {
			return fmt.Errorf("consumer: %d redelivered, %d pending ack; want a failed try", info.NumRedelivered, info.NumAckPending)
		}
		return nil
	})
	if ready := st.ready(t); len(ready) != 0 {
		t.Fatalf("%d mails reached mail.ready.acme without Redis, want 0", len(ready))
	}
	if n := len(st.msgs(t, bus.StreamRewritten, "mail.rewritten.acme")); n != 1 {
		t.Fatalf("REWRITTEN holds %d mails, want the waiting one", n)
	}

	// Redis comes back on the same address: the mail goes through, counted once.
	restartRedis(t, st.redisAddr)
	st.settled(t, 1, 0)
	if err := st.svc.Ready(); err != nil {
		t.Errorf("Ready after Redis came back: %v", err)
	}
	if ready := st.ready(t); len(ready) != 1 || st.used(t) != 1 {
		t.Errorf("after Redis came back: %d ready, counter %d; want 1 and 1", len(ready), st.used(t))
	}
}

func TestStageRejectsInvalidInput(t *testing.T) {
	st := startStage(t, 2)
	ctx := context.Background()
	if err := st.bus.JetStream().Conn().Publish("mail.rewritten.acme", []byte("\xff not protobuf")); err != nil {
		t.Fatal(err)
	}
	st.rewritten(t, &cmv1.OutboundMail{MailId: "x1", Tenant: "globex"}, "") // unknown tenant
	st.rewritten(t, &cmv1.OutboundMail{Tenant: "acme"}, "")                 // no mail id
	other := mail("x2")                                                     // tenant differs from subject
	if err := st.bus.Publish(ctx, "mail.rewritten.globex", other, ""); err != nil {
		t.Fatal(err)
	}
	st.settled(t, 4, 0)
	dlq := len(st.msgs(t, bus.StreamDLQ, "dlq.quota.acme")) + len(st.msgs(t, bus.StreamDLQ, "dlq.quota.globex"))
	if dlq != 4 {
		t.Errorf("%d dead letters, want 4", dlq)
	}
	if len(st.ready(t)) != 0 || st.used(t) != 0 {
		t.Errorf("invalid input reached mail.ready or the counter")
	}
}

func TestHoldWaitsForTheNextWindow(t *testing.T) {
	st := startStage(t, 1)
	st.svc.spread = func() time.Duration { return 42 * time.Second }
	st.now = utc("2026-11-24T22:30:00Z")
	ctx := context.Background()
	handle := func(id string) error {
		data, _ := proto.Marshal(mail(id))
		return st.svc.handle(ctx, &bus.Delivery{Subject: "mail.rewritten.acme", Tenant: "acme", Data: data, Attempt: 1})
	}
	if err := handle("h1"); err != nil {
		t.Fatalf("first mail: %v", err)
	}
	err := handle("h2")
	var retry *bus.RetryError
	if !errors.As(err, &retry) || !errors.Is(err, ErrOverLimit) {
		t.Fatalf("over-limit mail: err = %v, want bus.RetryAfter(ErrOverLimit, …)", err)
	}
	if want := 90*time.Minute + 42*time.Second; retry.After != want {
		t.Errorf("over-limit mail retried after %s, want %s (next window at 00:00Z plus the spread)", retry.After, want)
	}

	// The next window: the held mail fits again.
	st.now = utc("2026-11-25T00:00:42Z")
	if err := handle("h2"); err != nil {
		t.Errorf("held mail in the next window: %v", err)
	}
	if n, _ := st.svc.counter.Used(ctx, "acme", "2026-11-25"); n != 1 {
		t.Errorf("next window's counter = %d, want 1", n)
	}
}

func TestDefaultReleaseSpread(t *testing.T) {
	st := startStage(t, 1)
	for range 100 {
		if d := st.svc.spread(); d < 0 || d >= MaxReleaseSpread {
			t.Fatalf("spread() = %s, want within [0, %s)", d, MaxReleaseSpread)
		}
	}
}

func TestNewRequiresItsDependencies(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New(Options{}) succeeded, want an error")
	}
}

// restartRedis starts a redis-server on addr, where a stopped one was.
func restartRedis(t *testing.T, addr string) {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if _, err := strconv.Atoi(port); err != nil {
		t.Fatalf("bad redis address %q", addr)
	}
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
func (b *lockedBuffer) find(t *testing.T, msg string) map[string]any {
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
