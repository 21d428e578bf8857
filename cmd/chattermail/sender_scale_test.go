package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// The sender scaling tests run three sender processes on one durable
// consumer and publish ready mail directly on mail.ready.acme, so only
// the sender is under test.
const (
	scaleMails   = 2000
	scaleWorkers = 8
)

// senderFleet is n sender processes sharing one NATS server and one SMTP
// sink, each with its own log.
type senderFleet struct {
	capture *smtpcapture.Server
	bus     *bus.Bus
	senders []*service
	logs    []*logBuffer
}

func startSenderFleet(t *testing.T, n int) *senderFleet {
	t.Helper()
	ns := testenv.NATS(t)
	capture, err := smtpcapture.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })
	host, port := capture.HostPort()
	cfg := fmt.Sprintf("tenants:\n  acme:\n    alias_domain: example.com\n    servers:\n      - {name: sink, host: %s, port: %d, tls: none}\n", host, port)
	path := filepath.Join(t.TempDir(), "tenants.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := bus.Connect(ns.ClientURL(), "scale-test", testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	f := &senderFleet{capture: capture, bus: b}
	for range n {
		logs := newLogBuffer(t)
		s := &service{
			name:  "sender",
			env:   []string{"NATS_URL=" + ns.ClientURL(), "CHATTERMAIL_CONFIG=" + path, "LOG_LEVEL=info"},
			args:  []string{"-ack-wait", "2s", "-retry-base", "200ms", "-workers", strconv.Itoa(scaleWorkers)},
			admin: "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)),
			logs:  logs,
		}
		s.start(t)
		t.Cleanup(s.stop)
		f.senders = append(f.senders, s)
		f.logs = append(f.logs, logs)
	}
	return f
}

// publish puts scaleMails ready mails on mail.ready.acme, 8 publishers
// at a time; mail i has Message-ID scale-<i>@example.com.
func (f *senderFleet) publish(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				id := fmt.Sprintf("scale-%d", i)
				m := &cmv1.OutboundMail{
					MailId: id, Tenant: "acme", MessageId: id + "@example.com",
					Recipient: &cmv1.Partner{Email: fmt.Sprintf("r%d@customer.example", i)},
					Subject:   "Scale " + id, BodyText: "Hello.",
					From:     &cmv1.FromDecision{Header: "notifications@example.com", SendingAddress: "notifications@example.com", Server: "sink"},
					Envelope: &cmv1.Envelope{MailFrom: "bounce@example.com", RcptTo: fmt.Sprintf("r%d@customer.example", i)},
				}
				if err := f.bus.Publish(ctx, bus.Subject(bus.ReadyPrefix, "acme"), m, id+":quota"); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for i := range scaleMails {
		next <- i
	}
	close(next)
	wg.Wait()
}

// waitFor waits until the sink holds at least n messages.
func (f *senderFleet) waitFor(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := f.capture.Wait(ctx, n); err != nil {
		t.Fatal(err)
	}
}

// count waits until every mail arrived and READY is empty (every ready
// message acked, so no duplicate is still on its way), then returns how
// many copies of each mail the sink received beyond the first.
func (f *senderFleet) count(t *testing.T) (duplicates int) {
	t.Helper()
	testenv.Eventually(t, 2*time.Minute, func() error {
		seen := f.seen(t)
		if len(seen) < scaleMails {
			return fmt.Errorf("%d of %d mails arrived", len(seen), scaleMails)
		}
		return nil
	})
	waitDrained(t, f.bus.JetStream())
	seen := f.seen(t)
	for i := range scaleMails {
		id := fmt.Sprintf("<scale-%d@example.com>", i)
		if seen[id] == 0 {
			t.Errorf("mail %s never arrived", id)
		}
		duplicates += max(0, seen[id]-1)
	}
	return duplicates
}

// seen counts the sink's messages by Message-ID.
func (f *senderFleet) seen(t *testing.T) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, m := range f.capture.Messages() {
		h, err := m.Header()
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Get("Message-Id")]++
	}
	return seen
}

// delivered returns how many mails each sender process reports delivered.
func (f *senderFleet) delivered() []int {
	out := make([]int, len(f.logs))
	for i, l := range f.logs {
		out[i] = strings.Count(l.String(), `"msg":"delivered"`)
	}
	return out
}

// TestSenderScaleExactlyOnce: three sender processes deliver 2,000 mails
// to one sink; every mail arrives exactly once and every process takes a
// share.
func TestSenderScaleExactlyOnce(t *testing.T) {
	f := startSenderFleet(t, 3)
	start := time.Now()
	f.publish(t)
	if dup := f.count(t); dup != 0 {
		t.Errorf("%d duplicate mails, want 0", dup)
	}
	per := f.delivered()
	t.Logf("%d mails in %s by three senders (%v each)", scaleMails, time.Since(start).Round(time.Millisecond), per)
	for i, n := range per {
		if n == 0 {
			t.Errorf("sender %d delivered nothing: the consumer is not shared", i)
		}
	}
	if n := len(f.capture.Messages()); n != scaleMails {
		t.Errorf("sink holds %d messages, want %d", n, scaleMails)
	}
}

// TestSenderScaleGracefulStop: one of three senders gets SIGTERM in the
// middle; it finishes or hands back what it holds and exits 0; every
// mail arrives exactly once.
func TestSenderScaleGracefulStop(t *testing.T) {
	f := startSenderFleet(t, 3)
	go f.publish(t)
	f.waitFor(t, scaleMails/3)
	s := f.senders[0]
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Wait(); err != nil {
		t.Errorf("sender stopped by SIGTERM: %v, want exit status 0\n%s", err, f.logs[0])
	}
	if dup := f.count(t); dup != 0 {
		t.Errorf("%d duplicate mails after a graceful stop, want 0", dup)
	}
	if !strings.Contains(f.logs[0].String(), `"msg":"stopped"`) {
		t.Error("the stopped sender did not log its orderly stop")
	}
}

// TestSenderScaleKilled: one of three senders is killed with SIGKILL in
// the middle. Every mail arrives; duplicates are possible only for the
// mails the killed process had inside an SMTP transaction (at most its
// workers), and are counted.
func TestSenderScaleKilled(t *testing.T) {
	f := startSenderFleet(t, 3)
	go f.publish(t)
	f.waitFor(t, scaleMails/3)
	f.senders[0].kill()
	dup := f.count(t)
	t.Logf("duplicates after SIGKILL: %d (bound: %d in flight in the killed process); delivered per process %v", dup, scaleWorkers, f.delivered())
	if dup > scaleWorkers {
		t.Errorf("%d duplicates, want at most %d (the killed sender's workers)", dup, scaleWorkers)
	}
}
