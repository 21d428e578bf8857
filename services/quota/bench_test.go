package quota

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Run the benchmarks with
//
//	go test -run '^$' -bench Admit -count 5 .                    # admission
//	go test -run '^$' -bench Release -benchtime 1x -count 5 .    # release: 5 runs of 100,000
//
// and take the median of the runs' figures.

// BenchmarkAdmit measures admissions (reservations) per second against a
// real redis-server, from 32 concurrent callers: "grant" counts mails in a
// window with room, "hold" puts mails in the held line of a full window.
func BenchmarkAdmit(b *testing.B) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(b), PoolSize: 64})
	b.Cleanup(func() { _ = rdb.Close() })
	l := NewLedger(rdb)
	ten := tenantIn(b, "")
	w := WindowOf(ten, testNow)
	for _, bc := range []struct {
		name  string
		limit int
	}{{"grant", 1_000_000_000}, {"hold", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			rdb.FlushDB(context.Background())
			var n atomic.Int64
			b.SetParallelism(16) // × GOMAXPROCS callers
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := benchID(int(n.Add(1)))
					if _, err := l.Admit(context.Background(), "acme", w, id, bc.limit); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "reservations/s")
		})
	}
}

// BenchmarkRelease100k measures how fast the scheduler releases 100,000
// held mails of one tenant onto mail.ready once the limit is raised (no
// pacing: one batch of 1,000 per pass), through a real redis-server and
// an in-process NATS server. It also reports the Redis memory one waiting
// mail takes (the payloads are in the HELD stream).
func BenchmarkRelease100k(b *testing.B) {
	const waiting = 100_000
	e := newEnv(b, tenantYAML(1, ""), "")
	svc := e.start(b, func(o *Options) {
		o.Now = time.Now
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
		o.Tick = time.Millisecond
		o.ReleaseBatch = 1000
		o.ReleaseInterval = time.Millisecond
		o.ReleaseWorkers = 32
	})
	ctx := context.Background()
	body := strings.Repeat("The customer signed the contract. ", 15) // ~500 bytes
	for range b.N {
		b.StopTimer()
		for _, s := range []string{bus.StreamReady, bus.StreamEvents, bus.StreamHeld} {
			st, _ := e.bus.JetStream().Stream(ctx, s)
			if err := st.Purge(ctx); err != nil {
				b.Fatal(err)
			}
		}
		if err := e.rdb.FlushDB(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		if err := svc.Ledger().SetLimit(ctx, "acme", 0); err != nil {
			b.Fatal(err)
		}
		before := usedMemory(b, e.rdb)
		fillHeldLine(b, e, waiting, body)
		perMail := float64(usedMemory(b, e.rdb)-before) / waiting

		b.StartTimer()
		start := time.Now()
		if err := svc.Ledger().SetLimit(ctx, "acme", 1_000_000_000); err != nil {
			b.Fatal(err)
		}
		for e.count(b, bus.StreamReady) < waiting {
			if time.Since(start) > 5*time.Minute {
				st, _ := svc.Ledger().Status(ctx, e.cfg.Tenant("acme"), time.Now())
				b.Fatalf("released %d of %d in 5 minutes; status %+v", e.count(b, bus.StreamReady), waiting, st)
			}
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(elapsed.Seconds(), "s/100k")
		b.ReportMetric(waiting/elapsed.Seconds(), "mails/s")
		b.ReportMetric(perMail, "redis-bytes/waiting-mail")
		testenv.Eventually(b, time.Minute, func() error {
			st, err := svc.Ledger().Status(ctx, e.cfg.Tenant("acme"), time.Now())
			if err != nil {
				return err
			}
			if st.Waiting+st.Releasing > 0 {
				return fmt.Errorf("lines not empty: %+v", st)
			}
			return nil
		})
	}
}

// fillHeldLine puts n mails in acme's held line as the stage does: each
// id in line first, then its payload in HELD, then the payload's sequence
// in Redis.
func fillHeldLine(b *testing.B, e *env, n int, body string) {
	b.Helper()
	ctx := context.Background()
	js := e.bus.JetStream()
	const chunk = 1000
	for from := 0; from < n; from += chunk {
		to := min(from+chunk, n)
		p := e.rdb.Pipeline()
		for i := from; i < to; i++ {
			p.ZAdd(ctx, HeldKey("acme"), redis.Z{Score: float64(i + 1), Member: benchID(i)})
			p.HSet(ctx, StoredKey("acme"), benchID(i), "")
		}
		if _, err := p.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		futures := make([]jetstream.PubAckFuture, 0, chunk)
		for i := from; i < to; i++ {
			m := mail(benchID(i))
			m.BodyText = body
			data, _ := proto.Marshal(m)
			f, err := js.PublishMsgAsync(mailMsg("mail.held.acme", data, bus.Trace{CorrelationID: "bench"}),
				jetstream.WithMsgID(bus.MsgID(m.GetMailId(), heldStage)))
			if err != nil {
				b.Fatal(err)
			}
			futures = append(futures, f)
		}
		p = e.rdb.Pipeline()
		for k, f := range futures {
			select {
			case ack := <-f.Ok():
				p.HSet(ctx, StoredKey("acme"), benchID(from+k), ack.Sequence)
			case err := <-f.Err():
				b.Fatal(err)
			}
		}
		if _, err := p.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// benchID is a mail id shaped like ingest's: a post id (a ULID) and a
// short hash of the recipient, 43 characters.
func benchID(i int) string { return fmt.Sprintf("01JD3Z5Q8M2V7N4K6R1T%06d-%016x", i/5, i) }

func usedMemory(b *testing.B, rdb *redis.Client) int64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no used_memory in INFO memory")
	return 0
}
