package quota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/redis/go-redis/v9"
)

// The Ledger's behaviour is one suite run against every Redis it must
// work with: a real redis-server and miniredis (the local all-in-one).

func TestLedgerRedisServer(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	testLedger(t, rdb)
}

func TestLedgerMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	testLedger(t, rdb)
}

// admitStep is one call of Admit and its expected answer.
type admitStep struct {
	mail string
	want Admission
}

// testWindow is the window of the table's cases.
const testWindow = "2026-11-24"

// ok, repeat and held build expected answers in testWindow.
func ok(used, limit int64, flags ...string) Admission {
	a := Admission{Window: testWindow, Allowed: true, Used: used, Limit: limit}
	for _, f := range flags {
		switch f {
		case "80":
			a.Crossed80 = true
		case "100":
			a.Reached100 = true
		default:
			panic(f)
		}
	}
	return a
}

func repeat(used, limit int64, flags ...string) Admission {
	a := ok(used, limit, flags...)
	a.Repeat = true
	return a
}

// held is a mail put in the held line at position, waiting long.
func held(used, limit, position, waiting int64) Admission {
	return Admission{Window: testWindow, Line: HeldLine, Used: used, Limit: limit, Position: position, Waiting: waiting}
}

// again is a mail found in the held line again.
func again(used, limit, position, waiting int64) Admission {
	a := held(used, limit, position, waiting)
	a.Repeat = true
	return a
}

// waitingAfter sets the held line's length of a grant.
func waitingAfter(n int64, a Admission) Admission {
	a.Waiting = n
	return a
}

// in moves an expected answer to another window.
func in(window string, a Admission) Admission {
	a.Window = window
	return a
}

var ledgerCases = []struct {
	name     string
	limit    int
	override string // value of OverrideKey; "" leaves it unset
	steps    []admitStep
}{
	{
		name:  "allows up to the limit then holds in arrival order",
		limit: 3,
		steps: []admitStep{
			{"m1", ok(1, 3)},
			{"m2", ok(2, 3)},
			{"m3", ok(3, 3, "80", "100")},
			{"m4", held(3, 3, 1, 1)},
			{"m5", held(3, 3, 2, 2)},
			{"m4", again(3, 3, 1, 2)},
		},
	},
	{
		name:  "a repeated mail is allowed and never counted twice",
		limit: 5,
		steps: []admitStep{
			{"m1", ok(1, 5)},
			{"m1", repeat(1, 5)},
			{"m2", ok(2, 5)},
			{"m1", repeat(2, 5)},
			{"m2", repeat(2, 5)},
			{"m3", ok(3, 5)},
		},
	},
	{
		name:  "a mail granted before the window filled is still allowed when full",
		limit: 1,
		steps: []admitStep{
			{"m1", ok(1, 1, "80", "100")},
			{"m2", held(1, 1, 1, 1)},
			{"m1", waitingAfter(1, repeat(1, 1, "80", "100"))},
			{"m2", again(1, 1, 1, 1)},
		},
	},
	{
		name:  "80 % and 100 % are reported once per window, again only on a repeat of that mail",
		limit: 10,
		steps: []admitStep{
			{"m1", ok(1, 10)}, {"m2", ok(2, 10)}, {"m3", ok(3, 10)}, {"m4", ok(4, 10)},
			{"m5", ok(5, 10)}, {"m6", ok(6, 10)}, {"m7", ok(7, 10)},
			{"m8", ok(8, 10, "80")},
			{"m9", ok(9, 10)},
			{"m8", repeat(9, 10, "80")},
			{"m9", repeat(9, 10)},
			{"m10", ok(10, 10, "100")},
			{"m11", held(10, 10, 1, 1)},
			{"m10", waitingAfter(1, repeat(10, 10, "100"))},
			{"m7", waitingAfter(1, repeat(10, 10))},
		},
	},
	{
		name:  "80 % of a limit that is not a multiple of 5 rounds up",
		limit: 7, // 80 % is 5.6 mails: the 6th crosses it
		steps: []admitStep{
			{"m1", ok(1, 7)}, {"m2", ok(2, 7)}, {"m3", ok(3, 7)}, {"m4", ok(4, 7)}, {"m5", ok(5, 7)},
			{"m6", ok(6, 7, "80")},
			{"m7", ok(7, 7, "100")},
		},
	},
	{
		name:     "the override wins over the file's limit",
		limit:    2,
		override: "4",
		steps: []admitStep{
			{"m1", ok(1, 4)},
			{"m2", ok(2, 4)},
			{"m3", ok(3, 4)}, // 75 %
			{"m4", ok(4, 4, "80", "100")},
			{"m5", held(4, 4, 1, 1)},
		},
	},
	{
		name:     "an override may lower the limit",
		limit:    200,
		override: "1",
		steps: []admitStep{
			{"m1", ok(1, 1, "80", "100")},
			{"m2", held(1, 1, 1, 1)},
		},
	},
	{
		name:     "an override of 0 holds everything",
		limit:    200,
		override: "0",
		steps:    []admitStep{{"m1", held(0, 0, 1, 1)}, {"m2", held(0, 0, 2, 2)}},
	},
}

func testLedger(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	l := NewLedger(rdb)
	ten := tenantIn(t, "")
	now := utc("2026-11-24T10:00:00Z")
	w := WindowOf(ten, now)
	if w.Name != testWindow {
		t.Fatalf("window %s, want %s", w.Name, testWindow)
	}
	reset := func(t *testing.T) {
		t.Helper()
		if err := rdb.FlushDB(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	admit := func(t *testing.T, w Window, mail string, limit int) Admission {
		t.Helper()
		a, err := l.Admit(ctx, "acme", w, mail, limit)
		if err != nil {
			t.Fatalf("Admit(%s, %s) error: %v", w.Name, mail, err)
		}
		return a
	}
	opts := ReleaseOptions{Batch: 10, Interval: time.Second, Lease: time.Minute}

	for _, tc := range ledgerCases {
		t.Run(tc.name, func(t *testing.T) {
			reset(t)
			if tc.override != "" {
				if err := rdb.Set(ctx, OverrideKey("acme"), tc.override, 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			for i, st := range tc.steps {
				if got := admit(t, w, st.mail, tc.limit); got != st.want {
					t.Fatalf("step %d: Admit(%s) = %+v, want %+v", i, st.mail, got, st.want)
				}
			}
			var last int64
			for _, st := range tc.steps {
				last = max(last, st.want.Used)
			}
			if n, err := l.Used(ctx, "acme", w.Name); err != nil || n != last {
				t.Fatalf("Used = %d, %v; want %d", n, err, last)
			}
		})
	}

	t.Run("an invalid override fails closed", func(t *testing.T) {
		for _, v := range []string{"lots", "-1", "2.5", " 3", "0x10"} {
			reset(t)
			rdb.Set(ctx, OverrideKey("acme"), v, 0)
			got, err := l.Admit(ctx, "acme", w, "m1", 5)
			if !errors.Is(err, ErrLedger) || got.Allowed {
				t.Errorf("override %q: Admit = %+v, %v; want not allowed and an ErrLedger", v, got, err)
			}
			if _, err := l.Release(ctx, "acme", w, 5, now, opts); !errors.Is(err, ErrLedger) {
				t.Errorf("override %q: Release error %v, want an ErrLedger", v, err)
			}
			if n, _ := l.Used(ctx, "acme", w.Name); n != 0 {
				t.Errorf("override %q: counted %d mails", v, n)
			}
			if n := rdb.ZCard(ctx, HeldKey("acme")).Val(); n != 0 {
				t.Errorf("override %q: %d mails held", v, n)
			}
		}
	})

	t.Run("windows and tenants count separately", func(t *testing.T) {
		reset(t)
		next := WindowOf(ten, w.End)
		for _, st := range []struct {
			tenant string
			w      Window
			mail   string
			want   Admission
		}{
			{"acme", w, "m1", ok(1, 1, "80", "100")},
			{"acme", w, "m2", held(1, 1, 1, 1)},
			{"acme", next, "m3", in(next.Name, held(0, 1, 2, 2))}, // m2 waits: m3 queues behind it
			{"globex", w, "m1", ok(1, 1, "80", "100")},
		} {
			got, err := l.Admit(ctx, st.tenant, st.w, st.mail, 1)
			if err != nil || got != st.want {
				t.Fatalf("Admit(%s, %s, %s) = %+v, %v; want %+v", st.tenant, st.w.Name, st.mail, got, err, st.want)
			}
		}
	})

	t.Run("a mail granted before midnight and retried after it is not counted again", func(t *testing.T) {
		reset(t)
		paris := tenantIn(t, "Europe/Paris")
		before := WindowOf(paris, utc("2026-11-24T22:59:59Z"))
		after := WindowOf(paris, utc("2026-11-24T23:00:01Z"))
		later := WindowOf(paris, after.End)
		for _, st := range []struct {
			w    Window
			mail string
			want Admission
		}{
			{before, "m1", in("2026-11-24", ok(1, 2))},
			{before, "m2", in("2026-11-24", ok(2, 2, "80", "100"))},
			{after, "m1", in("2026-11-24", repeat(2, 2))},
			{after, "m3", in("2026-11-25", ok(1, 2))},
			{after, "m2", in("2026-11-24", repeat(2, 2))},
			{after, "m4", in("2026-11-25", ok(2, 2, "80", "100"))},
			{later, "m1", in("2026-11-26", ok(1, 2))}, // two windows on, it is a new mail
		} {
			got, err := l.Admit(ctx, "acme", st.w, st.mail, 2)
			if err != nil || got != st.want {
				t.Fatalf("Admit(%s, %s) = %+v, %v; want %+v", st.w.Name, st.mail, got, err, st.want)
			}
		}
	})

	t.Run("release takes stored held mail in arrival order as far as the window has room", func(t *testing.T) {
		reset(t)
		for i := range 6 {
			admit(t, w, fmt.Sprintf("m%d", i), 2)
		}
		// m2..m5 are held; m3 is not stored yet.
		for i, id := range []string{"m2", "m4", "m5"} {
			if _, _, err := l.Locate(ctx, "acme", w, id, uint64(100+i), now, 2); err != nil {
				t.Fatal(err)
			}
		}
		next := WindowOf(ten, w.End)
		at := next.Start
		b, err := l.Release(ctx, "acme", next, 2, at, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := []Waiting{
			{ID: "m2", Stored: 100, Grant: Grant{Window: next.Name, Used: 1, Limit: 2, Held: true}},
			{ID: "m4", Stored: 101, Grant: Grant{Window: next.Name, Used: 2, Limit: 2, Held: true, Crossed80: true, Reached100: true}},
		}
		if !slices.Equal(b.Mails, want) || b.Held != 2 || b.Releasing != 2 || b.Used != 2 || !b.Gate.Equal(at.Add(time.Second)) {
			t.Fatalf("Release = %+v, want m2 and m4 (m3 is not stored), 2 held, 2 releasing, gate 1s later", b)
		}
		// The window is full: nothing more, however often asked.
		if b, err := l.Release(ctx, "acme", next, 2, at.Add(30*time.Second), opts); err != nil || len(b.Mails) != 0 {
			t.Fatalf("Release in a full window = %+v, %v; want nothing", b, err)
		}
		if n, err := l.Done(ctx, "acme", []string{"m2", "m4", "m4", "nope"}); err != nil || n != 2 {
			t.Fatalf("Done = %d, %v; want 2", n, err)
		}
		if n := rdb.HLen(ctx, StoredKey("acme")).Val(); n != 2 {
			t.Errorf("%d stored mails after Done, want 2 (m3 and m5)", n)
		}
	})

	t.Run("the release gate paces batches", func(t *testing.T) {
		reset(t)
		rdb.Set(ctx, OverrideKey("acme"), 0, 0)
		for i := range 25 {
			id := fmt.Sprintf("m%02d", i)
			admit(t, w, id, 100)
			if _, _, err := l.Locate(ctx, "acme", w, id, uint64(i+1), now, 100); err != nil {
				t.Fatal(err)
			}
		}
		rdb.Del(ctx, OverrideKey("acme"))
		var got []int
		for _, step := range []time.Duration{0, 0, 999 * time.Millisecond, time.Second, time.Second, 2 * time.Second} {
			b, err := l.Release(ctx, "acme", w, 100, now.Add(step), opts)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, len(b.Mails))
			ids := make([]string, len(b.Mails))
			for i, m := range b.Mails {
				ids[i] = m.ID
			}
			if _, err := l.Done(ctx, "acme", ids); err != nil {
				t.Fatal(err)
			}
		}
		if want := []int{10, 0, 0, 10, 0, 5}; !slices.Equal(got, want) {
			t.Errorf("mails released at +0, +0, +999ms, +1s, +1s, +2s = %v, want %v", got, want)
		}
	})

	t.Run("a lease that ends gives the mail to the next pass", func(t *testing.T) {
		reset(t)
		admit(t, w, "m1", 0)
		l.Locate(ctx, "acme", w, "m1", 7, now, 0)
		b1, _ := l.Release(ctx, "acme", w, 1, now, opts)
		b2, _ := l.Release(ctx, "acme", w, 1, now.Add(time.Minute-time.Millisecond), opts)
		b3, _ := l.Release(ctx, "acme", w, 1, now.Add(time.Minute), opts)
		if len(b1.Mails) != 1 || len(b2.Mails) != 0 || len(b3.Mails) != 1 || b3.Mails[0] != b1.Mails[0] {
			t.Fatalf("passes took %v, %v, %v; want m1, nothing during the lease, m1 again with its grant", b1.Mails, b2.Mails, b3.Mails)
		}
		if n, _ := l.Used(ctx, "acme", w.Name); n != 1 {
			t.Errorf("counted %d, want 1: a lease that ends does not count again", n)
		}
		if err := l.Expire(ctx, "acme", []string{"m1"}); err != nil {
			t.Fatal(err)
		}
		if b4, _ := l.Release(ctx, "acme", w, 1, now.Add(time.Minute), opts); len(b4.Mails) != 1 {
			t.Errorf("after Expire the next pass took %v, want m1", b4.Mails)
		}
	})

	t.Run("parked mail is released when due, not before", func(t *testing.T) {
		reset(t)
		a := admit(t, w, "p1", 5)
		g := Grant{Window: a.Window, Used: a.Used, Limit: a.Limit, Paced: true}
		if seq, err := l.Park(ctx, "acme", "p1", now.Add(3*time.Second), g); err != nil || seq != 0 {
			t.Fatalf("Park = %d, %v; want 0 (not stored yet)", seq, err)
		}
		if got := admit(t, w, "p1", 5); got.Line != PacedLine || !got.Repeat || got.Stored != 0 {
			t.Errorf("Admit of a parked mail = %+v, want it reported in the paced line", got)
		}
		if b, _ := l.Release(ctx, "acme", w, 5, now.Add(time.Hour), opts); len(b.Mails) != 0 {
			t.Errorf("Release took %v, a paced mail that is not stored", b.Mails)
		}
		if seq, rel, err := l.Locate(ctx, "acme", w, "p1", 42, now, 5); seq != 42 || rel || err != nil {
			t.Errorf("Locate = %d, %v, %v; want 42, not releasable before due", seq, rel, err)
		}
		// Parking again keeps the first due time.
		if seq, err := l.Park(ctx, "acme", "p1", now.Add(time.Hour), g); err != nil || seq != 42 {
			t.Errorf("Park again = %d, %v; want 42", seq, err)
		}
		if b, _ := l.Release(ctx, "acme", w, 5, now.Add(2*time.Second), opts); len(b.Mails) != 0 || !b.NextPaced.Equal(now.Add(3*time.Second)) {
			t.Errorf("Release before due = %+v, want nothing and NextPaced at +3s", b)
		}
		b, _ := l.Release(ctx, "acme", w, 5, now.Add(3*time.Second), opts)
		if want := []Waiting{{ID: "p1", Stored: 42, Grant: g}}; !slices.Equal(b.Mails, want) {
			t.Errorf("Release when due = %+v, want %+v", b.Mails, want)
		}
		if n, _ := l.Used(ctx, "acme", w.Name); n != 1 {
			t.Errorf("counted %d, want 1", n)
		}
	})

	t.Run("the first location recorded wins", func(t *testing.T) {
		reset(t)
		admit(t, w, "m1", 0)
		if seq, rel, err := l.Locate(ctx, "acme", w, "m1", 5, now, 0); seq != 5 || rel || err != nil {
			t.Errorf("Locate = %d, %v, %v; want 5, not releasable with limit 0", seq, rel, err)
		}
		if seq, _, err := l.Locate(ctx, "acme", w, "m1", 9, now, 0); seq != 5 || err != nil {
			t.Errorf("second Locate = %d, %v; want 5", seq, err)
		}
		if seq, _, err := l.Locate(ctx, "acme", w, "gone", 9, now, 0); seq != 0 || err != nil {
			t.Errorf("Locate of a mail in no line = %d, %v; want 0", seq, err)
		}
		if got := admit(t, w, "m1", 0); got.Stored != 5 {
			t.Errorf("Admit of a held, stored mail = %+v, want Stored 5", got)
		}
		if _, rel, _ := l.Locate(ctx, "acme", w, "m1", 5, now, 1); !rel {
			t.Errorf("Locate with room: not releasable")
		}
	})

	t.Run("status shows the limit that applies and why", func(t *testing.T) {
		reset(t)
		for i := range 4 {
			admit(t, w, fmt.Sprintf("m%d", i), ten.DailyLimit)
		}
		st, err := l.Status(ctx, ten, now)
		if err != nil || st.Used != 4 || st.Limit != 200 || st.LimitSource != LimitFromFile || st.Waiting != 0 ||
			st.Override != nil || !st.NextRelease.IsZero() || !st.ResetsAt.Equal(w.End) {
			t.Fatalf("Status = %+v, %v; want 4 used of the file's 200, nothing waiting", st, err)
		}
		if err := l.SetLimit(ctx, "acme", 4); err != nil {
			t.Fatal(err)
		}
		admit(t, w, "m9", ten.DailyLimit)
		st, _ = l.Status(ctx, ten, now)
		if st.Limit != 4 || st.LimitSource != LimitFromOverride || st.Override == nil || *st.Override != 4 ||
			st.FileLimit != 200 || st.Waiting != 1 || !st.NextRelease.Equal(w.End) {
			t.Errorf("Status with override = %+v, want limit 4 from the override, 1 waiting until %s", st, w.End)
		}
		if err := l.SetLimit(ctx, "acme", 0); err != nil {
			t.Fatal(err)
		}
		if st, _ = l.Status(ctx, ten, now); !st.NextRelease.IsZero() || !strings.Contains(st.NextReleaseReason, "limit is 0") {
			t.Errorf("Status with limit 0 = %+v, want no release planned", st)
		}
		if err := l.ClearLimit(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
		if st, _ = l.Status(ctx, ten, now); st.Limit != 200 || st.LimitSource != LimitFromFile || !st.NextRelease.Equal(now) {
			t.Errorf("Status after ClearLimit = %+v, want the file's 200 and a release now", st)
		}
		for _, n := range []int64{-1, MaxLimit + 1} {
			if err := l.SetLimit(ctx, "acme", n); !errors.Is(err, ErrBadLimit) {
				t.Errorf("SetLimit(%d) = %v, want ErrBadLimit", n, err)
			}
		}
	})

	t.Run("keys share the tenant's hash tag; window keys expire a day after the window", func(t *testing.T) {
		reset(t)
		admit(t, w, "m1", 1)
		admit(t, w, "m2", 1)
		l.Locate(ctx, "acme", w, "m2", 1, now, 1)
		l.Park(ctx, "acme", "m3", now, Grant{Window: w.Name})
		l.SetLimit(ctx, "acme", 2)
		l.Release(ctx, "acme", w, 1, now, opts)
		keys, err := rdb.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if slot, want := keySlot(k), keySlot(CounterKey("acme", w.Name)); slot != want {
				t.Errorf("key %s has hash slot %d, want %d", k, slot, want)
			}
			ttl, err := rdb.TTL(ctx, k).Result()
			if strings.Contains(k, ":quota:") {
				if err != nil || ttl < 47*time.Hour || ttl > 48*time.Hour {
					t.Errorf("TTL(%s) = %s, %v; want the window's 24h plus a day", k, ttl, err)
				}
			} else if ttl >= 0 {
				t.Errorf("TTL(%s) = %s, want none: lines and limits last", k, ttl)
			}
		}
		if len(keys) < 10 {
			t.Errorf("keys = %q, want counter, granted set, markers, lines, stored, grants, gate, limit", keys)
		}
	})

	t.Run("scripts are sent again after SCRIPT FLUSH", func(t *testing.T) {
		reset(t)
		admit(t, w, "m1", 3)
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if got := admit(t, w, "m2", 3); got != ok(2, 3) {
			t.Fatalf("Admit after SCRIPT FLUSH = %+v, want %+v", got, ok(2, 3))
		}
	})

	t.Run("concurrent grants never exceed the limit", func(t *testing.T) {
		reset(t)
		const limit, mails = 20, 60
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			allowed int
			crossed = map[string]int{}
		)
		for i := range mails {
			wg.Go(func() {
				// Every mail arrives twice, as a redelivery would.
				for range 2 {
					a, err := l.Admit(ctx, "acme", w, fmt.Sprintf("m%d", i), limit)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if a.Allowed && !a.Repeat {
						allowed++
					}
					if a.Crossed80 && !a.Repeat {
						crossed["80"]++
					}
					if a.Reached100 && !a.Repeat {
						crossed["100"]++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if allowed != limit || crossed["80"] != 1 || crossed["100"] != 1 {
			t.Errorf("granted %d mails, thresholds %v; want %d and one of each", allowed, crossed, limit)
		}
		if n, _ := l.Used(ctx, "acme", w.Name); n != limit {
			t.Errorf("Used = %d, want %d", n, limit)
		}
		if n := rdb.ZCard(ctx, HeldKey("acme")).Val(); n != mails-limit {
			t.Errorf("%d held, want %d", n, mails-limit)
		}
	})

	t.Run("empty mail id", func(t *testing.T) {
		if _, err := l.Admit(ctx, "acme", w, "", 3); !errors.Is(err, ErrLedger) {
			t.Errorf("Admit with empty mail id: err = %v, want ErrLedger", err)
		}
	})
}

// TestLedgerRacesOverManyWindows runs several "replicas" that admit,
// store and release one tenant's mail at once, window after window, and
// checks that every window grants exactly its limit, that no mail is
// granted twice and that every mail is granted in the end.
func TestLedgerRacesOverManyWindows(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), PoolSize: 32})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	l := NewLedger(rdb)
	ten := tenantIn(t, "Asia/Kolkata")
	const (
		limit    = 30
		replicas = 6
		windows  = 12
		mails    = limit*windows - 7 // the last window is not full
	)
	opts := ReleaseOptions{Batch: 7, Interval: time.Millisecond, Lease: time.Hour}
	w := WindowOf(ten, utc("2026-03-01T12:00:00Z"))

	// Window 0: every replica admits a share of the mails (and each mail
	// twice, as redeliveries), storing the held ones.
	var wg sync.WaitGroup
	for r := range replicas {
		wg.Go(func() {
			for i := r; i < mails; i += replicas {
				id := fmt.Sprintf("m%04d", i)
				for range 2 {
					a, err := l.Admit(ctx, "acme", w, id, limit)
					if err != nil {
						t.Error(err)
						return
					}
					if a.Line == HeldLine && a.Stored == 0 {
						if _, _, err := l.Locate(ctx, "acme", w, id, uint64(i+1), w.Start, limit); err != nil {
							t.Error(err)
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()

	// Later windows: every replica passes until the window is full.
	granted := map[string]string{}
	var mu sync.Mutex
	for win := 1; win < windows; win++ {
		w = windowAfter(ten, w, 1)
		at := w.Start
		for range replicas {
			wg.Go(func() {
				for step := range 1000 {
					b, err := l.Release(ctx, "acme", w, limit, at.Add(time.Duration(step)*time.Millisecond), opts)
					if err != nil {
						t.Error(err)
						return
					}
					ids := make([]string, len(b.Mails))
					mu.Lock()
					for i, m := range b.Mails {
						if prev, dup := granted[m.ID]; dup {
							t.Errorf("%s granted in %s and again in %s", m.ID, prev, m.Grant.Window)
						}
						granted[m.ID] = m.Grant.Window
						ids[i] = m.ID
					}
					mu.Unlock()
					if _, err := l.Done(ctx, "acme", ids); err != nil {
						t.Error(err)
						return
					}
					if b.Used >= b.Limit || b.Held == 0 {
						return
					}
				}
			})
		}
		wg.Wait()
		n, err := l.Used(ctx, "acme", w.Name)
		if want := min(limit, mails-limit*win); err != nil || n != int64(want) {
			t.Fatalf("window %s (%d) granted %d, %v; want %d", w.Name, win, n, err, want)
		}
	}
	if len(granted) != mails-limit {
		t.Errorf("released %d distinct mails, want %d", len(granted), mails-limit)
	}
	if n := rdb.ZCard(ctx, HeldKey("acme")).Val() + rdb.ZCard(ctx, ReleasingKey("acme")).Val() + rdb.HLen(ctx, StoredKey("acme")).Val(); n != 0 {
		t.Errorf("%d entries left in the lines, want 0", n)
	}
}

// keySlot is the Redis Cluster hash slot of key (CRC16 of its hash tag,
// mod 16384), computed here so the test does not trust the code it checks.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}
