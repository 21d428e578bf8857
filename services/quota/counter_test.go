package quota

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/redis/go-redis/v9"
)

// The Counter's behaviour is one suite run against every Redis it must
// work with: a real redis-server and miniredis (the local all-in-one).

func TestCounterRedisServer(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	testCounter(t, rdb)
}

func TestCounterMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	testCounter(t, rdb)
}

// admitStep is one call of Admit and its expected answer.
type admitStep struct {
	mail string
	want Admission
}

// testWindow is the window of the table's cases.
const testWindow = "2026-11-24"

// ok, repeat and refused build expected answers in testWindow.
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

func refused(used, limit int64) Admission {
	return Admission{Window: testWindow, Used: used, Limit: limit}
}

// in moves an expected answer to another window.
func in(window string, a Admission) Admission {
	a.Window = window
	return a
}

var counterCases = []struct {
	name     string
	limit    int
	override string // value of OverrideKey; "" leaves it unset
	steps    []admitStep
}{
	{
		name:  "allows up to the limit then refuses",
		limit: 3,
		steps: []admitStep{
			{"m1", ok(1, 3)},
			{"m2", ok(2, 3)},
			{"m3", ok(3, 3, "80", "100")},
			{"m4", refused(3, 3)},
			{"m5", refused(3, 3)},
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
			{"m2", refused(1, 1)},
			{"m1", repeat(1, 1, "80", "100")},
			{"m2", refused(1, 1)},
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
			{"m11", refused(10, 10)},
			{"m10", repeat(10, 10, "100")},
			{"m7", repeat(10, 10)},
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
			{"m5", refused(4, 4)},
		},
	},
	{
		name:     "an override may lower the limit",
		limit:    200,
		override: "1",
		steps: []admitStep{
			{"m1", ok(1, 1, "80", "100")},
			{"m2", refused(1, 1)},
		},
	},
	{
		name:     "an override of 0 holds everything",
		limit:    200,
		override: "0",
		steps:    []admitStep{{"m1", refused(0, 0)}, {"m2", refused(0, 0)}},
	},
}

func testCounter(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	c := NewCounter(rdb)
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

	for _, tc := range counterCases {
		t.Run(tc.name, func(t *testing.T) {
			reset(t)
			if tc.override != "" {
				if err := rdb.Set(ctx, OverrideKey("acme"), tc.override, 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			for i, st := range tc.steps {
				got, err := c.Admit(ctx, "acme", w, st.mail, tc.limit)
				if err != nil {
					t.Fatalf("step %d: Admit(%s) error: %v", i, st.mail, err)
				}
				if got != st.want {
					t.Fatalf("step %d: Admit(%s) = %+v, want %+v", i, st.mail, got, st.want)
				}
			}
			last := tc.steps[len(tc.steps)-1].want.Used
			if n, err := c.Used(ctx, "acme", w.Name); err != nil || n != last {
				t.Fatalf("Used = %d, %v; want %d", n, err, last)
			}
		})
	}

	t.Run("an invalid override fails closed", func(t *testing.T) {
		for _, v := range []string{"lots", "-1", "2.5", " 3", "0x10"} {
			reset(t)
			rdb.Set(ctx, OverrideKey("acme"), v, 0)
			got, err := c.Admit(ctx, "acme", w, "m1", 5)
			if !errors.Is(err, ErrCounter) || got.Allowed {
				t.Errorf("override %q: Admit = %+v, %v; want not allowed and an ErrCounter", v, got, err)
			}
			if n, _ := c.Used(ctx, "acme", w.Name); n != 0 {
				t.Errorf("override %q: counted %d mails", v, n)
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
			{"acme", w, "m2", refused(1, 1)},
			{"acme", next, "m2", in(next.Name, ok(1, 1, "80", "100"))},
			{"globex", w, "m1", ok(1, 1, "80", "100")},
		} {
			got, err := c.Admit(ctx, st.tenant, st.w, st.mail, 1)
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
			got, err := c.Admit(ctx, "acme", st.w, st.mail, 2)
			if err != nil || got != st.want {
				t.Fatalf("Admit(%s, %s) = %+v, %v; want %+v", st.w.Name, st.mail, got, err, st.want)
			}
		}
	})

	t.Run("keys share the tenant's hash tag and expire a day after the window", func(t *testing.T) {
		reset(t)
		if _, err := c.Admit(ctx, "acme", w, "m1", 1); err != nil {
			t.Fatal(err)
		}
		keys, err := rdb.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 4 {
			t.Errorf("keys after one grant = %q, want counter, granted set and two markers", keys)
		}
		for _, k := range keys {
			if slot, want := keySlot(k), keySlot(CounterKey("acme", w.Name)); slot != want {
				t.Errorf("key %s has hash slot %d, want %d", k, slot, want)
			}
			ttl, err := rdb.TTL(ctx, k).Result()
			if err != nil || ttl < 47*time.Hour || ttl > 48*time.Hour {
				t.Errorf("TTL(%s) = %s, %v; want the window's 24h plus a day", k, ttl, err)
			}
		}
	})

	t.Run("the script is sent again after SCRIPT FLUSH", func(t *testing.T) {
		reset(t)
		if _, err := c.Admit(ctx, "acme", w, "m1", 3); err != nil {
			t.Fatal(err)
		}
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		got, err := c.Admit(ctx, "acme", w, "m2", 3)
		if err != nil || got != ok(2, 3) {
			t.Fatalf("Admit after SCRIPT FLUSH = %+v, %v; want %+v", got, err, ok(2, 3))
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
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Every mail arrives twice, as a redelivery would.
				for range 2 {
					a, err := c.Admit(ctx, "acme", w, fmt.Sprintf("m%d", i), limit)
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
			}()
		}
		wg.Wait()
		if allowed != limit || crossed["80"] != 1 || crossed["100"] != 1 {
			t.Errorf("granted %d mails, thresholds %v; want %d and one of each", allowed, crossed, limit)
		}
		if n, _ := c.Used(ctx, "acme", w.Name); n != limit {
			t.Errorf("Used = %d, want %d", n, limit)
		}
	})

	t.Run("empty mail id", func(t *testing.T) {
		if _, err := c.Admit(ctx, "acme", w, "", 3); !errors.Is(err, ErrCounter) {
			t.Errorf("Admit with empty mail id: err = %v, want ErrCounter", err)
		}
	})
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
