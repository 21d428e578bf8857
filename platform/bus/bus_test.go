package bus_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

func startBus(t *testing.T) *bus.Bus {
	t.Helper()
	s := testenv.NATS(t)
	b, err := bus.Connect(s.ClientURL(), "test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx := context.Background()
	if err := b.EnsureStreams(ctx, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// Declaring twice is a no-op.
	if err := b.EnsureStreams(ctx, bus.StreamOptions{}); err != nil {
		t.Fatalf("EnsureStreams again: %v", err)
	}
	return b
}

func consume(t *testing.T, b *bus.Bus, h bus.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(ctx, bus.ConsumerSpec{Stream: bus.StreamCompose, Durable: "t", Stage: "test", Workers: 2,
			Backoff: func(int) time.Duration { return 10 * time.Millisecond }}, h)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consume: %v", err)
		}
	})
}

func TestPublishDeduplicatesByMsgID(t *testing.T) {
	b := startBus(t)
	ctx := context.Background()
	m := &cmv1.OutboundMail{MailId: "m1", Tenant: "acme"}
	for range 3 {
		if err := b.Publish(ctx, bus.Subject(bus.ComposePrefix, "acme"), m, bus.MsgID("m1", "compose")); err != nil {
			t.Fatal(err)
		}
	}
	info, err := b.JetStream().Stream(ctx, bus.StreamCompose)
	if err != nil {
		t.Fatal(err)
	}
	si, _ := info.Info(ctx)
	if got := si.State.Msgs; got != 1 {
		t.Fatalf("stream holds %d messages after 3 publishes with one Nats-Msg-Id, want 1", got)
	}
}

func TestHandlerResultsAndTrace(t *testing.T) {
	b := startBus(t)
	ctx := bus.WithTrace(context.Background(), bus.Trace{CorrelationID: "corr-1"})
	var calls atomic.Int32
	got := make(chan *bus.Delivery, 10)
	traces := make(chan bus.Trace, 10)
	consume(t, b, func(ctx context.Context, d *bus.Delivery) error {
		var m cmv1.OutboundMail
		if err := proto.Unmarshal(d.Data, &m); err != nil {
			return bus.Reject(err)
		}
		if m.GetMailId() == "flaky" && calls.Add(1) < 3 {
			return errors.New("temporary")
		}
		traces <- bus.TraceFrom(ctx)
		got <- d
		return nil
	})
	if err := b.Publish(ctx, "mail.compose.acme", &cmv1.OutboundMail{MailId: "flaky"}, "flaky"); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if d.Attempt != 3 || d.Tenant != "acme" {
			t.Errorf("delivery attempt=%d tenant=%q, want 3 and acme", d.Attempt, d.Tenant)
		}
		if tr := <-traces; tr.CorrelationID != "corr-1" {
			t.Errorf("handler trace = %+v, want correlation corr-1", tr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("temporary failures were not retried")
	}
}

func TestRejectGoesToDeadLetterWithReason(t *testing.T) {
	b := startBus(t)
	ctx := context.Background()
	consume(t, b, func(ctx context.Context, d *bus.Delivery) error {
		var m cmv1.OutboundMail
		if err := proto.Unmarshal(d.Data, &m); err != nil {
			return bus.Reject(err)
		}
		return nil
	})
	garbage := []byte{0xff, 0xff, 0xff}
	if _, err := b.JetStream().Publish(ctx, "mail.compose.acme", garbage); err != nil {
		t.Fatal(err)
	}
	cons, err := b.JetStream().CreateOrUpdateConsumer(ctx, bus.StreamDLQ, jetstream.ConsumerConfig{FilterSubject: "dlq.test.acme"})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	if string(msg.Data()) != string(garbage) {
		t.Errorf("dead letter payload = %x, want the original %x", msg.Data(), garbage)
	}
	if r := msg.Headers().Get(bus.HeaderDLQReason); r == "" {
		t.Error("dead letter has no reason header")
	}
	if s := msg.Headers().Get(bus.HeaderDLQSubject); s != "mail.compose.acme" {
		t.Errorf("dead letter subject header = %q, want mail.compose.acme", s)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		st, _ := b.JetStream().Stream(ctx, bus.StreamCompose)
		si, _ := st.Info(ctx)
		if si.State.Msgs != 0 {
			return errors.New("rejected message still in the work queue")
		}
		return nil
	})
}
