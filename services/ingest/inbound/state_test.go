package inbound_test

import (
	"context"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/chattermail/chattermail/services/ingest/inbound"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func openState(t *testing.T) *inbound.State {
	t.Helper()
	nc, err := nats.Connect(testenv.NATS(t).ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	s, err := inbound.OpenState(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStateSenderRate: at most 20 messages per sender per 120 minutes
// per tenant (mail-rules §7); the window slides.
func TestStateSenderRate(t *testing.T) {
	s := openState(t)
	ctx := context.Background()
	t0 := time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)
	for i := range 20 {
		if ok, err := s.AllowSender(ctx, "acme", "ann@customer.example", 20, 120*time.Minute, t0.Add(time.Duration(i)*time.Minute)); err != nil || !ok {
			t.Fatalf("message %d: AllowSender = %v, %v; want true", i+1, ok, err)
		}
	}
	tests := []struct {
		tenant, sender string
		at             time.Duration
		want           bool
	}{
		{"acme", "ann@customer.example", 30 * time.Minute, false},
		{"other", "ann@customer.example", 30 * time.Minute, true},
		{"acme", "carl@example.com", 30 * time.Minute, true},
		{"acme", "ann@customer.example", 120*time.Minute + 30*time.Second, true},
	}
	for _, tt := range tests {
		if ok, err := s.AllowSender(ctx, tt.tenant, tt.sender, 20, 120*time.Minute, t0.Add(tt.at)); err != nil || ok != tt.want {
			t.Errorf("AllowSender(%s, %s, +%s) = %v, %v; want %v", tt.tenant, tt.sender, tt.at, ok, err, tt.want)
		}
	}
}

// TestStateBounceCount: soft bounces are kept but not counted; hard ones
// count within the window.
func TestStateBounceCount(t *testing.T) {
	s := openState(t)
	ctx := context.Background()
	t0 := time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)
	week := 7 * 24 * time.Hour
	steps := []struct {
		hard bool
		at   time.Duration
		want int
	}{
		{false, 0, 0},
		{true, time.Hour, 1},
		{false, 2 * time.Hour, 1},
		{true, 8 * 24 * time.Hour, 1}, // the first hard bounce left the window
		{true, 9 * 24 * time.Hour, 2},
	}
	for i, st := range steps {
		n, err := s.CountBounce(ctx, "acme", "carl@example.com", st.hard, week, t0.Add(st.at))
		if err != nil || n != st.want {
			t.Errorf("step %d: CountBounce(hard=%v) = %d, %v; want %d", i, st.hard, n, err, st.want)
		}
	}
}
