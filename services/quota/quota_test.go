package quota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"google.golang.org/protobuf/proto"
)

func TestStageGrantsUpToTheLimitAndHoldsTheRest(t *testing.T) {
	e := newEnv(t, tenantYAML(2, ""), "")
	e.start(t, nil)
	for _, id := range []string{"m1", "m2", "m3"} {
		e.rewritten(t, mail(id), bus.MsgID(id, "rewrite"))
	}
	// Every input is acknowledged, the held one too: held mail does not
	// stay in the consumer's ack-pending set.
	e.settled(t, 3, 0)

	ready := e.ready(t)
	if len(ready) != 2 {
		t.Fatalf("mail.ready.acme holds %d mails, want 2", len(ready))
	}
	for i, m := range ready {
		q := m.GetQuota()
		if m.GetMailId() != fmt.Sprintf("m%d", i+1) || q.GetWindow() != "2026-11-24" || q.GetUsed() != int64(i+1) ||
			q.GetLimit() != 2 || !q.GetGrantedAt().AsTime().Equal(testNow) || q.GetHeldUntil() != nil {
			t.Errorf("ready[%d] = %s with grant %v, want m%d, used %d of 2, granted now, never held", i, m.GetMailId(), q, i+1, i+1)
		}
	}
	if n := e.used(t, "2026-11-24"); n != 2 {
		t.Errorf("counter = %d, want 2", n)
	}
	if n := e.count(t, bus.StreamRewritten); n != 0 {
		t.Errorf("REWRITTEN holds %d mails, want none", n)
	}
	if stored := e.msgs(t, bus.StreamHeld, "mail.held.acme"); len(stored) != 1 {
		t.Errorf("HELD holds %d mails, want the held one", len(stored))
	}
	if st := e.status(t); st.Waiting != 1 || !st.NextRelease.Equal(utc("2026-11-25T00:00:00Z")) {
		t.Errorf("status = %+v, want 1 waiting until the next window", st)
	}

	held := e.mailEvents(t, "held")
	if len(held) != 1 {
		t.Fatalf("%d held events, want 1", len(held))
	}
	ev := held[0]
	release := utc("2026-11-25T00:00:00Z")
	if ev.GetMailId() != "m3" || ev.GetOutcome() != cmv1.Outcome_OUTCOME_HELD || ev.GetStage() != Stage ||
		!ev.GetReleaseAt().AsTime().Equal(release) || !ev.GetAt().AsTime().Equal(testNow) ||
		ev.GetRecipient() != "m3@example.org" || !strings.Contains(ev.GetReason(), "daily limit of 2") {
		t.Errorf("held event = %v, want m3 held by quota until %s", ev, release)
	}

	// Limit 2: the second grant reaches both 80 % and 100 %.
	var percents []int32
	for _, q := range e.quotaEvents(t) {
		if q.GetWindow() != "2026-11-24" || q.GetUsed() != 2 || q.GetLimit() != 2 || !q.GetResetsAt().AsTime().Equal(release) {
			t.Errorf("quota event = %v", q)
		}
		percents = append(percents, q.GetPercent())
	}
	if fmt.Sprint(percents) != "[80 100]" {
		t.Errorf("quota events for percents %v, want [80 100]", percents)
	}

	line := e.logs.find(t, "mail held: daily limit reached")
	if line["level"] != "INFO" || line["tenant"] != "acme" || line["mail_id"] != "m3" || line["release_at"] != "2026-11-25T00:00:00Z" {
		t.Errorf("held log line = %v, want info with tenant, mail_id and release_at", line)
	}
}

func TestStageCountsARepeatedMailOnce(t *testing.T) {
	e := newEnv(t, tenantYAML(2, ""), "")
	e.start(t, nil)
	// Two copies in REWRITTEN (no Nats-Msg-Id, so the stream keeps both),
	// as after a crash of rewrite outside the duplicate window; then two
	// of a mail that is held.
	for _, id := range []string{"m1", "m1", "m2", "m3", "m3"} {
		e.rewritten(t, mail(id), "")
	}
	e.settled(t, 5, 0)
	if ready := e.ready(t); len(ready) != 2 || ready[0].GetQuota().GetUsed() != 1 {
		t.Errorf("mail.ready.acme holds %d messages (%v), want m1 and m2", len(ready), ready)
	}
	if n := e.used(t, "2026-11-24"); n != 2 {
		t.Errorf("counter = %d, want 2", n)
	}
	if st := e.status(t); st.Waiting != 1 {
		t.Errorf("%d mails waiting, want m3 once", st.Waiting)
	}
	if n := len(e.msgs(t, bus.StreamHeld, "mail.held.acme")); n != 1 {
		t.Errorf("HELD holds %d copies, want m3 once", n)
	}
	if n := len(e.mailEvents(t, "held")); n != 1 {
		t.Errorf("%d held events, want one for m3", n)
	}
}

// TestThousandMailsLimit200 is the scenario: 1,000 mails for a
// tenant with limit 200. 200 go today and 800 are held, each with an
// event; when the clock crosses midnight the next 200 go by themselves,
// in batches of 50 a second, and so on: none lost, none duplicated, in
// arrival order.
func TestThousandMailsLimit200(t *testing.T) {
	e := newEnv(t, tenantYAML(200, ""), "")
	svc := e.start(t, nil)
	e.publishMails(t, 0, 1000)
	e.settled(t, 1000, 0)

	e.waitReady(t, 200)
	if n := e.used(t, "2026-11-24"); n != 200 {
		t.Fatalf("today's counter = %d, want 200", n)
	}
	held := e.mailEvents(t, "held")
	if len(held) != 800 {
		t.Fatalf("%d held events, want 800", len(held))
	}
	// Mail number p in line (from 1) is planned in window 1+(p-1)/200
	// after today, in batch ((p-1)%200)/50 of that window, a second apart.
	for p, ev := range held {
		want := utc("2026-11-25T00:00:00Z").AddDate(0, 0, p/200).Add(time.Duration(p%200/50) * time.Second)
		if ev.GetMailId() != fmt.Sprintf("m%04d", 200+p) || !ev.GetReleaseAt().AsTime().Equal(want) {
			t.Fatalf("held event %d = %s, release %s; want m%04d, %s", p, ev.GetMailId(),
				ev.GetReleaseAt().AsTime().Format(time.RFC3339), 200+p, want.Format(time.RFC3339))
		}
	}
	if n := e.count(t, bus.StreamHeld); n != 800 {
		t.Errorf("HELD holds %d mails, want 800", n)
	}

	midnight := utc("2026-11-25T00:00:00Z")
	for day := 1; day <= 4; day++ {
		e.clock.Set(midnight)
		window := midnight.Format(time.DateOnly)
		// One batch when the window opens, the next when the gate opens.
		for batch := 1; batch <= 4; batch++ {
			e.waitReady(t, uint64(200*day+50*batch))
			looked(t, svc)
			if n := e.count(t, bus.StreamReady); n != uint64(200*day+50*batch) {
				t.Fatalf("day %d: %d mails released at %s, want %d: the release is paced", day, n-200, e.clock.Now(), 200*(day-1)+50*batch)
			}
			e.clock.Add(time.Second)
		}
		// The window is full: nothing more until the next.
		looked(t, svc)
		st := e.status(t)
		next := midnight.AddDate(0, 0, 1)
		if day == 4 {
			next = time.Time{} // nothing waits any more
		}
		if n := e.count(t, bus.StreamReady); n != uint64(200*(day+1)) || st.Used != 200 || st.Window != window ||
			st.Waiting != int64(800-200*day) || !st.NextRelease.Equal(next) {
			t.Fatalf("day %d, window full: %d ready, status %+v", day, n, st)
		}
		midnight = midnight.AddDate(0, 0, 1)
	}

	// None lost, none duplicated, each window exactly its limit.
	ready := e.ready(t)
	seen := map[string]bool{}
	for _, m := range ready {
		if seen[m.GetMailId()] {
			t.Errorf("%s reached mail.ready twice", m.GetMailId())
		}
		seen[m.GetMailId()] = true
	}
	if len(seen) != 1000 {
		t.Errorf("%d distinct mails ready, want 1000", len(seen))
	}
	for day := range 5 {
		w := utc("2026-11-24T00:00:00Z").AddDate(0, 0, day).Format(time.DateOnly)
		if n := e.used(t, w); n != 200 {
			t.Errorf("window %s counted %d, want 200", w, n)
		}
		if n := e.rdb.SCard(context.Background(), GrantedKey("acme", w)).Val(); n != 200 {
			t.Errorf("window %s granted %d mail ids, want 200", w, n)
		}
	}
	// In arrival order: the grants' (window, used) follow the mail ids.
	slices.SortFunc(ready, func(a, b *cmv1.OutboundMail) int {
		return strings.Compare(fmt.Sprintf("%s %04d", a.GetQuota().GetWindow(), a.GetQuota().GetUsed()),
			fmt.Sprintf("%s %04d", b.GetQuota().GetWindow(), b.GetQuota().GetUsed()))
	})
	for i, m := range ready {
		if m.GetMailId() != fmt.Sprintf("m%04d", i) {
			t.Fatalf("grant %d (%s, used %d) went to %s, want m%04d", i, m.GetQuota().GetWindow(), m.GetQuota().GetUsed(), m.GetMailId(), i)
		}
		if wasHeld := i >= 200; (m.GetQuota().GetHeldUntil() != nil) != wasHeld {
			t.Errorf("%s: held_until %v, want set only for held mail", m.GetMailId(), m.GetQuota().GetHeldUntil())
		}
	}
	released := e.mailEvents(t, "released")
	if len(released) != 800 {
		t.Errorf("%d released events, want 800", len(released))
	}
	if q := e.quotaEvents(t); len(q) != 10 {
		t.Errorf("%d quota events, want 10 (80 %% and 100 %% in each of 5 windows)", len(q))
	}
	if n := e.count(t, bus.StreamHeld); n != 0 {
		t.Errorf("HELD holds %d mails after the release, want 0", n)
	}
	if st := e.status(t); st.Waiting != 0 || st.Paced != 0 || st.Releasing != 0 {
		t.Errorf("lines after the release: %+v, want empty", st)
	}
	if n := e.rdb.HLen(context.Background(), StoredKey("acme")).Val(); n != 0 {
		t.Errorf("%d stored locations left, want 0", n)
	}
	if info := e.consumer(t); info.NumRedelivered != 0 {
		t.Errorf("consumer redelivered %d mails, want none: held mail is not redelivered", info.NumRedelivered)
	}
}

// TestReleaseAtTheTenantsMidnight crosses UTC midnight and the tenant's
// own midnight, on ordinary and daylight-saving days.
func TestReleaseAtTheTenantsMidnight(t *testing.T) {
	tests := []struct {
		zone    string
		now     string
		notYet  []string // clock times at which nothing is released yet
		release string   // the tenant's next midnight
		window  string
	}{
		{"America/New_York", "2026-11-24T20:00:00Z", []string{"2026-11-25T00:00:00Z", "2026-11-25T04:59:59Z"}, "2026-11-25T05:00:00Z", "2026-11-25"},
		{"Asia/Kolkata", "2026-11-24T10:00:00Z", []string{"2026-11-24T18:29:59Z"}, "2026-11-24T18:30:00Z", "2026-11-25"},
		// 29 March 2026 lasts 23 hours in Paris: it ends at 22:00Z.
		{"Europe/Paris", "2026-03-29T12:00:00Z", []string{"2026-03-29T21:59:59Z"}, "2026-03-29T22:00:00Z", "2026-03-30"},
		// 25 October 2026 lasts 25 hours: it ends at 23:00Z, not 22:00Z.
		{"Europe/Paris", "2026-10-25T12:00:00Z", []string{"2026-10-25T22:00:00Z", "2026-10-25T22:59:59Z"}, "2026-10-25T23:00:00Z", "2026-10-26"},
	}
	for _, tt := range tests {
		t.Run(tt.zone+" "+tt.now, func(t *testing.T) {
			e := newEnv(t, tenantYAML(1, tt.zone), "")
			e.clock.Set(utc(tt.now))
			svc := e.start(t, nil)
			e.publishMails(t, 0, 3)
			e.settled(t, 3, 0)
			e.waitReady(t, 1)
			held := e.mailEvents(t, "held")
			if len(held) != 2 || !held[0].GetReleaseAt().AsTime().Equal(utc(tt.release)) {
				t.Fatalf("held events %v, want 2, the first released at %s", held, tt.release)
			}
			for _, at := range tt.notYet {
				e.clock.Set(utc(at))
				looked(t, svc)
				if n := e.count(t, bus.StreamReady); n != 1 {
					t.Fatalf("at %s: %d mails ready, want 1: the tenant's day is not over", at, n)
				}
			}
			e.clock.Set(utc(tt.release))
			e.waitReady(t, 2)
			r := e.ready(t)[1]
			if r.GetMailId() != "m0001" || r.GetQuota().GetWindow() != tt.window || !r.GetQuota().GetHeldUntil().AsTime().Equal(utc(tt.release)) {
				t.Errorf("released %s with grant %v, want m0001 in window %s, held until %s", r.GetMailId(), r.GetQuota(), tt.window, tt.release)
			}
		})
	}
}

// TestRaisingTheLimitReleasesHeldMail changes the limit at runtime, as
// "chattermail quota set" does (Redis and pub/sub, no call into the
// service) and through the admin endpoint: held mail leaves without a
// restart and without the clock moving.
func TestRaisingTheLimitReleasesHeldMail(t *testing.T) {
	e := newEnv(t, tenantYAML(2, ""), "")
	svc := e.start(t, func(o *Options) { o.AdminToken = "t0ken" })
	e.publishMails(t, 0, 10)
	e.settled(t, 10, 0)
	e.waitReady(t, 2)

	// As the CLI does it, from another process.
	if err := NewLedger(e.rdb).SetLimit(context.Background(), "acme", 5); err != nil {
		t.Fatal(err)
	}
	e.waitReady(t, 5)
	looked(t, svc)
	if st := e.status(t); st.Used != 5 || st.Limit != 5 || st.LimitSource != LimitFromOverride || st.Waiting != 5 {
		t.Errorf("status after raising to 5: %+v", st)
	}

	// Through the admin endpoint, once the release gate has opened again.
	e.clock.Add(time.Second)
	srv := adminServer(t, svc)
	if code, _ := srv.do(t, "PUT", "/quota/acme", `{"daily_limit": 100}`, "t0ken"); code != 200 {
		t.Fatalf("PUT /quota/acme = %d", code)
	}
	e.waitReady(t, 10)
	// New mail is granted at once again: the line is empty.
	e.publishMails(t, 10, 11)
	e.waitReady(t, 11)

	// Lowering the limit holds new mail again.
	if code, _ := srv.do(t, "PUT", "/quota/acme", `{"daily_limit": null}`, "t0ken"); code != 200 {
		t.Fatalf("PUT null = %d", code)
	}
	e.publishMails(t, 11, 12)
	e.settled(t, 12, 0)
	if n := e.count(t, bus.StreamReady); n != 11 {
		t.Errorf("%d ready after the limit went back to 2, want 11", n)
	}
	if st := e.status(t); st.Limit != 2 || st.LimitSource != LimitFromFile || st.Waiting != 1 {
		t.Errorf("status after clearing the override: %+v", st)
	}
	for i, m := range e.ready(t) {
		if m.GetMailId() != fmt.Sprintf("m%04d", i) {
			t.Errorf("ready[%d] = %s, want m%04d: the line leaves in order", i, m.GetMailId(), i)
		}
	}
}

// TestConcurrentServicesGrantExactlyTheLimit runs three quota services on
// one tenant, racing to admit and release, window after window.
func TestConcurrentServicesGrantExactlyTheLimit(t *testing.T) {
	const limit, mails, replicas = 25, 240, 3
	e := newEnv(t, tenantYAML(limit, "Europe/Paris"), "")
	var svcs []*Service
	for range replicas {
		svcs = append(svcs, e.start(t, func(o *Options) {
			o.Workers = 4
			o.ReleaseBatch = 9
			o.ReleaseWorkers = 4
		}))
	}
	e.publishMails(t, 0, mails)
	e.settled(t, mails, 0)
	e.waitReady(t, limit)

	w := WindowOf(e.cfg.Tenant("acme"), e.clock.Now())
	windows := []string{w.Name}
	for released := limit; released < mails; {
		w = windowAfter(e.cfg.Tenant("acme"), w, 1)
		windows = append(windows, w.Name)
		e.clock.Set(w.Start)
		want := min(released+limit, mails)
		for step := 0; e.count(t, bus.StreamReady) < uint64(want); step++ {
			if step == 20 {
				t.Fatalf("window %s: %d ready, want %d", w.Name, e.count(t, bus.StreamReady), want)
			}
			looked(t, svcs[step%replicas])
			e.clock.Add(time.Second)
		}
		released = want
	}
	for _, s := range svcs {
		looked(t, s)
	}

	seen := map[string]string{}
	for i, win := range windows {
		n := e.used(t, win)
		if want := int64(min(limit, mails-limit*i)); n != want {
			t.Errorf("window %s granted %d, want exactly %d (limit %d)", win, n, want, limit)
		}
		ids := e.rdb.SMembers(context.Background(), GrantedKey("acme", win)).Val()
		if int64(len(ids)) != n {
			t.Errorf("window %s: counter %d, %d mail ids", win, n, len(ids))
		}
		for _, id := range ids {
			if prev, dup := seen[id]; dup {
				t.Errorf("%s granted in %s and in %s", id, prev, win)
			}
			seen[id] = win
		}
	}
	if len(seen) != mails {
		t.Errorf("%d mails granted in %d windows, want %d", len(seen), len(windows), mails)
	}
	if len(windows) != mails/limit+1 {
		t.Errorf("the mail took %d windows, want %d full ones", len(windows), mails/limit+1)
	}
	if n := len(e.ready(t)); n != mails {
		t.Errorf("%d mails ready, want %d", n, mails)
	}
	if n := e.count(t, bus.StreamHeld); n != 0 {
		t.Errorf("HELD holds %d, want 0", n)
	}
}

func TestStageFailsClosedWithoutRedis(t *testing.T) {
	r := startPersistentRedis(t)
	e := newEnv(t, tenantYAML(2, ""), r.addr())
	svc := e.start(t, nil)
	if err := svc.Ready(); err != nil {
		t.Fatalf("Ready with Redis up: %v", err)
	}
	r.kill()
	testenv.Eventually(t, 10*time.Second, func() error {
		if svc.Ready() == nil {
			return errors.New("Ready still reports no error")
		}
		return nil
	})

	e.rewritten(t, mail("m1"), bus.MsgID("m1", "rewrite"))
	// Tried, failed, redelivered: still pending, never published.
	testenv.Eventually(t, 10*time.Second, func() error {
		if info := e.consumer(t); info.NumRedelivered < 1 || info.NumAckPending != 1 {
			return fmt.Errorf("consumer: %d redelivered, %d pending ack; want a failed try", info.NumRedelivered, info.NumAckPending)
		}
		return nil
	})
	if n := e.count(t, bus.StreamReady); n != 0 {
		t.Fatalf("%d mails reached mail.ready.acme without Redis, want 0", n)
	}
	if n := e.count(t, bus.StreamRewritten); n != 1 {
		t.Fatalf("REWRITTEN holds %d mails, want the waiting one", n)
	}

	// Redis comes back on the same address: the mail goes through, counted once.
	r.start()
	e.settled(t, 1, 0)
	if err := svc.Ready(); err != nil {
		t.Errorf("Ready after Redis came back: %v", err)
	}
	if n := e.count(t, bus.StreamReady); n != 1 || e.used(t, "2026-11-24") != 1 {
		t.Errorf("after Redis came back: %d ready, counter %d; want 1 and 1", n, e.used(t, "2026-11-24"))
	}
}

// TestStageFailsClosedWhenRedisIsSlow pauses Redis longer than the
// service waits for it: mail waits, is retried, and is counted once.
func TestStageFailsClosedWhenRedisIsSlow(t *testing.T) {
	e := newEnv(t, tenantYAML(5, ""), "")
	svc := e.start(t, nil)
	ctx := context.Background()
	if err := e.rdb.Do(ctx, "CLIENT", "PAUSE", 1500, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now() // the pause is real time
	e.publishMails(t, 0, 3)
	testenv.Eventually(t, 10*time.Second, func() error {
		if info := e.consumer(t); info.NumRedelivered < 1 {
			return errors.New("no mail retried yet")
		}
		return nil
	})
	if svc.Ready() == nil && time.Since(paused) < time.Second {
		t.Error("Ready reports no error while Redis does not answer")
	}
	if time.Since(paused) < time.Second {
		if n := e.count(t, bus.StreamReady); n != 0 {
			t.Errorf("%d mails published while Redis did not answer", n)
		}
	}
	e.settled(t, 3, 0)
	if n := e.count(t, bus.StreamReady); n != 3 || e.used(t, "2026-11-24") != 3 {
		t.Errorf("after the pause: %d ready, counter %d; want 3 and 3", n, e.used(t, "2026-11-24"))
	}
}

// TestRedisKilledMidRun kills redis-server (SIGKILL) in the middle of
// admitting mail and in the middle of releasing it, and starts it again
// on its data: nothing is lost, nothing is sent twice, no window goes
// over its limit, and the service recovers by itself.
func TestRedisKilledMidRun(t *testing.T) {
	const limit, total = 50, 250
	r := startPersistentRedis(t)
	e := newEnv(t, tenantYAML(limit, ""), r.addr())
	svc := e.start(t, func(o *Options) {
		o.Workers = 4
		o.ReleaseBatch = 25
	})
	// killWhen kills Redis as soon as mail.ready holds more than n mails,
	// checking as fast as it can, then starts it again once the service
	// has noticed.
	killWhen := func(n uint64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for e.count(t, bus.StreamReady) <= n {
			if time.Now().After(deadline) {
				t.Fatalf("mail.ready never went past %d", n)
			}
			time.Sleep(time.Millisecond)
		}
		r.kill()
		testenv.Eventually(t, 10*time.Second, func() error {
			if svc.Ready() == nil {
				return errors.New("Ready still reports no error")
			}
			return nil
		})
		looked(t, svc) // a pass with Redis down
		if len(r.aofFiles()) == 0 {
			t.Fatal("redis-server wrote no append-only file")
		}
		r.start()
		testenv.Eventually(t, 10*time.Second, svc.Ready)
	}

	// Killed while the first mails are admitted and held.
	e.publishMails(t, 0, 150)
	killWhen(20)
	e.publishMails(t, 150, total) // more mail arrives after the restart
	e.settled(t, total, 0)
	e.waitReady(t, limit)

	// Window by window; every other window, Redis is killed as its
	// first release reaches mail.ready.
	windows := []string{"2026-11-24"}
	midnight := utc("2026-11-25T00:00:00Z")
	for released := limit; released < total; {
		windows = append(windows, midnight.Format(time.DateOnly))
		e.clock.Set(midnight)
		if len(windows)%2 == 0 {
			killWhen(uint64(released))
		}
		want := min(released+limit, total)
		for step := 0; e.count(t, bus.StreamReady) < uint64(want); step++ {
			if step == 10 {
				t.Fatalf("window %s: %d ready, want %d; status %+v", midnight.Format(time.DateOnly), e.count(t, bus.StreamReady), want, e.status(t))
			}
			looked(t, svc)
			// The release gate opens after a second; a lease taken when
			// Redis died ends after a minute.
			e.clock.Add(30 * time.Second)
		}
		released = want
		midnight = midnight.AddDate(0, 0, 1)
	}
	looked(t, svc)

	seen := map[string]bool{}
	for _, win := range windows {
		if n := e.used(t, win); n != limit {
			t.Errorf("window %s counted %d, want %d", win, n, limit)
		}
		for _, id := range e.rdb.SMembers(context.Background(), GrantedKey("acme", win)).Val() {
			if seen[id] {
				t.Errorf("%s granted twice", id)
			}
			seen[id] = true
		}
	}
	ready := e.ready(t)
	ids := map[string]bool{}
	for _, m := range ready {
		ids[m.GetMailId()] = true
	}
	if len(ready) != total || len(ids) != total || len(seen) != total {
		t.Errorf("%d ready, %d distinct, %d granted; want %d of each", len(ready), len(ids), len(seen), total)
	}
	if n := e.count(t, bus.StreamHeld); n != 0 {
		t.Errorf("HELD holds %d, want 0", n)
	}
	if st := e.status(t); st.Waiting+st.Paced+st.Releasing != 0 {
		t.Errorf("lines not empty: %+v", st)
	}
	if n := len(e.mailEvents(t, "released")); n != total-limit {
		t.Errorf("%d released events, want %d", n, total-limit)
	}
}

// TestAPassThatDiesIsRepublishedAfterItsLease: a replica took held mail
// for release and died before publishing it; after the lease the mail is
// published by another pass, once.
func TestAPassThatDiesIsRepublishedAfterItsLease(t *testing.T) {
	e := newEnv(t, tenantYAML(1, ""), "")
	svc := e.start(t, nil)
	e.publishMails(t, 0, 2)
	e.settled(t, 2, 0)
	e.waitReady(t, 1)

	// The dying replica: it takes m0001 in the next window and vanishes.
	e.clock.Set(utc("2026-11-25T00:00:00Z"))
	w := WindowOf(e.cfg.Tenant("acme"), e.clock.Now())
	b, err := NewLedger(e.rdb).Release(context.Background(), "acme", w, 1, e.clock.Now(),
		ReleaseOptions{Batch: 10, Interval: time.Second, Lease: svc.o.Lease})
	if err != nil || len(b.Mails) != 1 {
		t.Fatalf("Release = %+v, %v; want m0001", b, err)
	}
	looked(t, svc)
	if n := e.count(t, bus.StreamReady); n != 1 {
		t.Fatalf("%d ready during the lease, want 1", n)
	}
	e.clock.Add(svc.o.Lease)
	e.waitReady(t, 2)
	looked(t, svc)
	if n := e.used(t, "2026-11-25"); n != 1 {
		t.Errorf("window counted %d, want 1", n)
	}
	if st := e.status(t); st.Releasing != 0 || st.Waiting != 0 {
		t.Errorf("lines after the republish: %+v", st)
	}
	if n := len(e.mailEvents(t, "released")); n != 1 {
		t.Errorf("%d released events, want 1", n)
	}
}

// TestPacingDelaysMailToADomain: mail over a domain's pace waits in the
// paced line, acknowledged, and goes when its slot comes; other domains
// are not slowed; a delay is not a delivery attempt.
func TestPacingDelaysMailToADomain(t *testing.T) {
	e := newEnv(t, tenantYAML(100, "", "    pacing:\n      - {domain: gmail.com, per_minute: 60}"), "")
	svc := e.start(t, nil)
	for _, m := range []*cmv1.OutboundMail{
		mailTo("g1", "a@gmail.com"), mailTo("g2", "b@gmail.com"), mailTo("o1", "a@example.org"),
		mailTo("g3", "c@Gmail.com"), mailTo("o2", "b@example.org"), mailTo("g4", "d@gmail.com"),
	} {
		e.rewritten(t, m, bus.MsgID(m.GetMailId(), "rewrite"))
	}
	e.settled(t, 6, 0)
	e.waitReady(t, 3)
	looked(t, svc)
	var ids []string
	for _, m := range e.ready(t) {
		ids = append(ids, m.GetMailId())
	}
	if want := []string{"g1", "o1", "o2"}; !slices.Equal(ids, want) {
		t.Fatalf("ready at once: %v, want %v", ids, want)
	}
	if st := e.status(t); st.Used != 6 || st.Paced != 3 || st.Waiting != 0 {
		t.Errorf("status = %+v, want all 6 counted, 3 paced", st)
	}
	for i, want := range []string{"g2", "g3", "g4"} {
		e.clock.Add(time.Second)
		e.waitReady(t, uint64(4+i))
		looked(t, svc)
		if n := e.count(t, bus.StreamReady); n != uint64(4+i) {
			t.Fatalf("after %ds: %d ready, want %d", i+1, n, 4+i)
		}
		m := e.ready(t)[3+i]
		if m.GetMailId() != want || m.GetQuota().GetUsed() == 0 || m.GetQuota().GetHeldUntil() != nil {
			t.Errorf("after %ds: %s with grant %v, want %s, granted, never held", i+1, m.GetMailId(), m.GetQuota(), want)
		}
	}
	if info := e.consumer(t); info.NumRedelivered != 0 {
		t.Errorf("%d redeliveries, want none: paced mail leaves the consumer", info.NumRedelivered)
	}
	if n := e.count(t, bus.StreamHeld); n != 0 {
		t.Errorf("HELD holds %d, want 0", n)
	}
}

// TestReleasedMailIsPacedToo: held mail released into a paced domain
// waits for its slot as well.
func TestReleasedMailIsPacedToo(t *testing.T) {
	e := newEnv(t, tenantYAML(1, "", "    pacing:\n      - {domain: gmail.com, per_minute: 60}"), "")
	svc := e.start(t, nil)
	for _, id := range []string{"g1", "g2", "g3"} {
		e.rewritten(t, mailTo(id, id+"@gmail.com"), "")
	}
	e.settled(t, 3, 0)
	e.waitReady(t, 1)
	if err := svc.Ledger().SetLimit(context.Background(), "acme", 3); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if st := e.status(t); st.Paced != 2 || st.Used != 3 {
			return fmt.Errorf("status %+v, want 2 paced of 3 used", st)
		}
		return nil
	})
	for i := range 2 {
		e.clock.Add(time.Second)
		e.waitReady(t, uint64(2+i))
	}
	for _, m := range e.ready(t)[1:] {
		if m.GetQuota().GetHeldUntil() == nil {
			t.Errorf("%s: no held_until", m.GetMailId())
		}
	}
	if n := len(e.mailEvents(t, "released")); n != 2 {
		t.Errorf("%d released events, want 2", n)
	}
}

func TestStageRejectsInvalidInput(t *testing.T) {
	e := newEnv(t, tenantYAML(2, ""), "")
	e.start(t, nil)
	ctx := context.Background()
	if err := e.bus.JetStream().Conn().Publish("mail.rewritten.acme", []byte("\xff not protobuf")); err != nil {
		t.Fatal(err)
	}
	e.rewritten(t, &cmv1.OutboundMail{MailId: "x1", Tenant: "globex"}, "") // unknown tenant
	e.rewritten(t, &cmv1.OutboundMail{Tenant: "acme"}, "")                 // no mail id
	other := mail("x2")                                                    // tenant differs from subject
	if err := e.bus.Publish(ctx, "mail.rewritten.globex", other, ""); err != nil {
		t.Fatal(err)
	}
	e.settled(t, 4, 0)
	dlq := len(e.msgs(t, bus.StreamDLQ, "dlq.quota.acme")) + len(e.msgs(t, bus.StreamDLQ, "dlq.quota.globex"))
	if dlq != 4 {
		t.Errorf("%d dead letters, want 4", dlq)
	}
	if e.count(t, bus.StreamReady) != 0 || e.used(t, "2026-11-24") != 0 {
		t.Errorf("invalid input reached mail.ready or the counter")
	}
}

// TestHeldMailIsStoredOnceWhenRetried: the handler runs twice for one
// input (a redelivery after a crash): one copy in HELD, one place in line.
func TestHeldMailIsStoredOnceWhenRetried(t *testing.T) {
	e := newEnv(t, tenantYAML(1, ""), "")
	svc := e.start(t, nil)
	data, _ := proto.Marshal(mail("h1"))
	d := &bus.Delivery{Subject: "mail.rewritten.acme", Tenant: "acme", Data: data, Attempt: 1}
	ctx := context.Background()
	if err := svc.handle(ctx, &bus.Delivery{Subject: d.Subject, Tenant: "acme", Data: mustMarshal(mail("g1")), Attempt: 1}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := svc.handle(ctx, d); err != nil {
			t.Fatalf("handle: %v", err)
		}
	}
	if n := e.count(t, bus.StreamHeld); n != 1 {
		t.Errorf("HELD holds %d copies, want 1", n)
	}
	// A copy stored twice (past the duplicate window) is deleted.
	w := WindowOf(e.cfg.Tenant("acme"), e.clock.Now())
	if err := svc.store(ctx, e.cfg.Tenant("acme"), w, "h1-other", d, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, bus.StreamHeld); n != 1 {
		t.Errorf("HELD holds %d copies after storing a mail in no line, want 1", n)
	}
	if st := e.status(t); st.Waiting != 1 {
		t.Errorf("%d waiting, want 1", st.Waiting)
	}
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func TestPlannedRelease(t *testing.T) {
	s := &Service{o: Options{ReleaseBatch: 50, ReleaseInterval: time.Second}}
	ten := tenantIn(t, "Europe/Paris")
	now := utc("2026-11-24T10:00:00Z")
	w := WindowOf(ten, now) // 2026-11-23T23:00Z .. 2026-11-24T23:00Z
	tests := []struct {
		used, limit, position int64
		want                  string
	}{
		{200, 200, 1, "2026-11-24T23:00:00Z"},
		{200, 200, 50, "2026-11-24T23:00:00Z"},
		{200, 200, 51, "2026-11-24T23:00:01Z"},
		{200, 200, 200, "2026-11-24T23:00:03Z"},
		{200, 200, 201, "2026-11-25T23:00:00Z"},
		{190, 200, 10, "2026-11-24T10:00:00Z"}, // room today, behind older mail
		{190, 200, 11, "2026-11-24T23:00:00Z"},
		{0, 0, 5, "2026-11-24T23:00:00Z"}, // limit 0: not before it is raised
		{10, 1, 1, "2026-11-24T23:00:00Z"},
		{10, 1, 3, "2026-11-26T23:00:00Z"},
	}
	for _, tt := range tests {
		got := s.plannedRelease(ten, w, tt.used, tt.limit, tt.position, now)
		if !got.Equal(utc(tt.want)) {
			t.Errorf("plannedRelease(used %d, limit %d, position %d) = %s, want %s",
				tt.used, tt.limit, tt.position, got.UTC().Format(time.RFC3339), tt.want)
		}
	}
}

func TestNewRequiresItsDependencies(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New(Options{}) succeeded, want an error")
	}
}

// TestOrphanHeldCopiesAreSwept: a HELD copy that belongs to no mail (a
// store retried after the duplicate window by a process that then died)
// is deleted once the tenant's lines are empty, and only then.
func TestOrphanHeldCopiesAreSwept(t *testing.T) {
	e := newEnv(t, tenantYAML(1, ""), "")
	svc := e.start(t, nil)
	ctx := context.Background()
	if err := svc.Ledger().SetLimit(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	// A held mail: the lines are not empty, so nothing is swept.
	e.rewritten(t, mail("h1"), "")
	e.settled(t, 1, 0)
	orphan := mailMsg("mail.held.acme", mustMarshal(mail("lost")), bus.Trace{})
	if _, err := e.bus.JetStream().PublishMsg(ctx, orphan); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * OrphanSweep)
	looked(t, svc)
	if n := e.count(t, bus.StreamHeld); n != 2 {
		t.Fatalf("HELD holds %d, want h1 and the orphan while h1 waits", n)
	}
	// h1 leaves; the lines are empty: the orphan goes.
	if err := svc.Ledger().SetLimit(ctx, "acme", 1); err != nil {
		t.Fatal(err)
	}
	e.waitReady(t, 1)
	e.clock.Add(2 * OrphanSweep)
	looked(t, svc)
	if n := e.count(t, bus.StreamHeld); n != 0 {
		t.Errorf("HELD holds %d, want the orphan swept", n)
	}
	e.logs.find(t, "HELD subject swept of orphan copies")
}
