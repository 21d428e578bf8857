package sender

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/emersion/go-smtp"
)

// benchMails is how many ready mails one benchmark operation delivers;
// BENCH_SENDER_MAILS overrides it.
func benchMails() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_SENDER_MAILS")); err == nil && n > 0 {
		return n
	}
	return 2000
}

// BenchmarkSender measures the sender stage alone: a backlog of ready
// mails on a file-backed JetStream READY stream is delivered by one
// sender (8 workers) to a loopback go-smtp sink that discards what it
// receives. Each operation delivers benchMails() mails; the metric is
// mails/s from the start of Run until the sink accepted the last one.
// Sub-benchmarks sign with RSA-2048, Ed25519 or nothing, with pooled
// connections or one connection per mail. Run with: make bench
func BenchmarkSender(b *testing.B) {
	for _, alg := range []string{"rsa2048", "ed25519", "none"} {
		for _, reuse := range []bool{true, false} {
			b.Run(fmt.Sprintf("dkim=%s/reuse=%v", alg, reuse), func(b *testing.B) { benchSender(b, alg, reuse) })
		}
	}
}

func benchSender(b *testing.B, alg string, reuse bool) {
	ns := testenv.NATS(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	bb, err := bus.Connect(ns.ClientURL(), "bench", log)
	if err != nil {
		b.Fatal(err)
	}
	defer bb.Close()
	if err := bb.EnsureStreams(context.Background(), bus.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	sink := startSink(b)
	tenants := tenantsYAML(serverYAML("relay", sink.addr, "none", false))
	switch alg {
	case "rsa2048":
		tenants = dkimTenants(sink.addr, config.DKIMKey{Domain: "example.com", Selector: "odoo", Algorithm: "rsa", KeyFile: absKey(b, "rsa-pkcs1.pem")})
	case "ed25519":
		tenants = dkimTenants(sink.addr, config.DKIMKey{Domain: "example.com", Selector: "odoo", Algorithm: "ed25519", KeyFile: absKey(b, "ed25519-a.pem")})
	}
	cfg, err := config.Parse([]byte(tenants), "")
	if err != nil {
		b.Fatal(err)
	}
	n := benchMails()
	var total time.Duration
	b.ResetTimer()
	for op := range b.N {
		b.StopTimer()
		publishBacklog(b, bb, op, n)
		svc, err := New(Options{Bus: bb, Config: cfg, Log: log, HeloName: "bench.test", DisableConnectionReuse: !reuse})
		if err != nil {
			b.Fatal(err)
		}
		target := sink.count.Load() + int64(n)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		b.StartTimer()
		start := time.Now()
		go func() { done <- svc.Run(ctx) }()
		sink.waitFor(b, target)
		total += time.Since(start)
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "mails/s")
	b.ReportMetric(float64(total.Microseconds())/float64(n*b.N), "µs/mail")
	b.ReportMetric(0, "ns/op")
}

func absKey(b *testing.B, name string) string {
	p, err := filepath.Abs(filepath.Join("testdata", "dkim", name))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// publishBacklog puts n ready mails of operation op on mail.ready.acme.
func publishBacklog(b *testing.B, bb *bus.Bus, op, n int) {
	ctx := context.Background()
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				m := readyMail(fmt.Sprintf("bench-%d-%d", op, i), "relay")
				m.MessageId = fmt.Sprintf("bench-%d-%d@example.com", op, i)
				if err := bb.Publish(ctx, bus.Subject(bus.ReadyPrefix, "acme"), m, m.GetMailId()+":quota"); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// sink is a go-smtp server that accepts and discards every message and
// counts them.
type sink struct {
	addr  string
	count atomic.Int64
	mu    sync.Mutex
	ch    chan struct{}
}

func startSink(b *testing.B) *sink {
	s := &sink{ch: make(chan struct{}, 1)}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return sinkSession{s}, nil }))
	srv.Domain = "sink.test"
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s.addr = ln.Addr().String()
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return s
}

func (s *sink) waitFor(b *testing.B, n int64) {
	deadline := time.After(5 * time.Minute)
	for s.count.Load() < n {
		select {
		case <-s.ch:
		case <-deadline:
			b.Fatalf("sink: %d of %d messages", s.count.Load(), n)
		}
	}
}

type sinkSession struct{ s *sink }

func (sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (ss sinkSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	ss.s.count.Add(1)
	select {
	case ss.s.ch <- struct{}{}:
	default:
	}
	return nil
}
func (sinkSession) Reset()        {}
func (sinkSession) Logout() error { return nil }

// BenchmarkSign is the cost of DKIM-signing one rendered mail (about
// 2.5 kB) with each key type.
func BenchmarkSign(b *testing.B) {
	msg, err := Render(sampleMail(), renderClock)
	if err != nil {
		b.Fatal(err)
	}
	for _, tt := range []struct{ name, file, alg string }{
		{"rsa2048", "rsa-pkcs1.pem", "rsa"},
		{"ed25519", "ed25519-a.pem", "ed25519"},
	} {
		key, err := loadKey(absKey(b, tt.file), tt.alg)
		if err != nil {
			b.Fatal(err)
		}
		keys := []signingKey{{domain: "example.com", selector: "odoo", algorithm: tt.alg, signer: key}}
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := signMessage(msg, keys); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
