package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/chattermail/chattermail/platform/dkimkey"
	"time"
)

// BenchmarkPipeline posts P posts with F followers each through the whole
// in-process pipeline (real NATS JetStream, real redis-server, SMTP to a
// loopback sink) and reports delivered mails per second, the post →
// SMTP-accept latency at p50 and p99, and the peak RSS of the process.
//
// It runs unsigned and with the tenant signing with RSA-2048 and with
// Ed25519. P and F come from BENCH_POSTS (default 200) and
// BENCH_FOLLOWERS (default 5). Run with: make bench
func BenchmarkPipeline(b *testing.B) {
	posts := envInt("BENCH_POSTS", 200)
	followers := envInt("BENCH_FOLLOWERS", 5)
	for _, dkim := range []string{"", dkimkey.RSA2048, dkimkey.Ed25519} {
		b.Run("dkim="+cmp.Or(dkim, "none"), func(b *testing.B) {
			for range b.N {
				runPipelineBench(b, posts, followers, dkim)
			}
		})
	}
}

func runPipelineBench(b *testing.B, posts, followers int, dkim string) {
	b.StopTimer()
	d := startDepsWith(b, posts*followers*2, dkim)
	base := startInProcess(b, d)
	bodies := make([]string, posts)
	for i := range bodies {
		bodies[i] = benchPost(i, followers)
	}
	b.StartTimer()

	start := time.Now()
	postedAt := make(map[string]time.Time, posts) // Message-ID → accepted
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan string)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range next {
				code, a := post(b, base, testAPIKey, body)
				if code != 202 {
					b.Errorf("POST = %d %+v", code, a)
					continue
				}
				mu.Lock()
				postedAt["<"+a.MessageID+">"] = time.Now()
				mu.Unlock()
			}
		}()
	}
	for _, body := range bodies {
		next <- body
	}
	close(next)
	wg.Wait()

	want := posts * followers
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	msgs, err := d.capture.Wait(ctx, want)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if signed := bytes.Contains(msgs[0].Raw, []byte("DKIM-Signature:")); signed != (dkim != "") {
		b.Fatalf("dkim=%q: the delivered mail is signed: %v", dkim, signed)
	}
	elapsed := msgs[len(msgs)-1].Received.Sub(start)

	lat := make([]time.Duration, 0, len(msgs))
	for _, m := range msgs {
		h, err := m.Header()
		if err != nil {
			b.Fatal(err)
		}
		if at, ok := postedAt[h.Get("Message-Id")]; ok {
			lat = append(lat, m.Received.Sub(at))
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(want)/elapsed.Seconds(), "mails/s")
	b.ReportMetric(float64(percentile(lat, 50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(peakRSS())/(1<<20), "peak-rss-MiB")
	b.ReportMetric(0, "ns/op")
}

func benchPost(i, followers int) string {
	type partner struct {
		Name  string `json:"name"`
		Email string `json:"email"`
	}
	type follower struct {
		Partner partner `json:"partner"`
	}
	p := map[string]any{
		"tenant":   "acme",
		"thread":   map[string]string{"model": "crm.lead", "id": strconv.Itoa(i)},
		"author":   partner{Name: "Bench Author", Email: "author@example.com"},
		"subject":  fmt.Sprintf("Bench post %d", i),
		"bodyText": strings.Repeat("Some text of a typical chatter message. ", 10),
		"bodyHtml": "<p>" + strings.Repeat("Some <b>text</b> of a typical chatter message. ", 10) + "</p>",
	}
	var fs []follower
	for f := range followers {
		fs = append(fs, follower{partner{Name: fmt.Sprintf("Follower %d", f), Email: fmt.Sprintf("f%d.p%d@customer.example", f, i)}})
	}
	p["followers"] = fs
	out, _ := json.Marshal(p)
	return string(out)
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// peakRSS is the process's peak resident set size (VmHWM), in bytes.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func envInt(key string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(key)); err == nil && n > 0 {
		return n
	}
	return def
}
