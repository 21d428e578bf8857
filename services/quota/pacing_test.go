package quota

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/redis/go-redis/v9"
)

func TestPacerReservesSlots(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	cfg, err := config.Parse([]byte(`
pacing:
  - {domain: outlook.com, per_minute: 30}
tenants:
  acme:
    alias_domain: example.com
    pacing:
      - {domain: gmail.com, per_minute: 60}
      - {domain: yahoo.com, per_minute: 120, burst: 3}
      - {domain: outlook.com, per_minute: 600}
  globex:
    alias_domain: globex.example
`), "")
	if err != nil {
		t.Fatal(err)
	}
	p := NewPacer(rdb, cfg)
	t0 := utc("2026-11-24T10:00:00Z")
	type call struct {
		tenant, rcpt string
		at           time.Duration // after t0
	}
	tests := []struct {
		name  string
		calls []call
		want  []time.Duration
	}{
		{
			name: "one a second, each mail reserving the next slot",
			calls: []call{
				{"acme", "a@gmail.com", 0}, {"acme", "b@GMail.com", 0}, {"acme", "c@gmail.com", 0},
				{"acme", "d@gmail.com", 500 * time.Millisecond}, {"acme", "e@gmail.com", 10 * time.Second},
			},
			want: []time.Duration{0, time.Second, 2 * time.Second, 2500 * time.Millisecond, 0},
		},
		{
			name: "a burst of three, then one every half second",
			calls: []call{
				{"acme", "a@yahoo.com", 0}, {"acme", "b@yahoo.com", 0}, {"acme", "c@yahoo.com", 0},
				{"acme", "d@yahoo.com", 0}, {"acme", "e@yahoo.com", 0},
			},
			want: []time.Duration{0, 0, 0, 500 * time.Millisecond, time.Second},
		},
		{
			name:  "tenants are paced apart by their own rules",
			calls: []call{{"acme", "a@gmail.com", 0}, {"globex", "b@gmail.com", 0}, {"globex", "c@gmail.com", 0}},
			want:  []time.Duration{0, 0, 0},
		},
		{
			name: "a global rule counts every tenant; the slower rule wins",
			calls: []call{
				{"globex", "a@outlook.com", 0}, {"globex", "b@outlook.com", 0}, {"acme", "c@outlook.com", 0},
			},
			want: []time.Duration{0, 2 * time.Second, 4 * time.Second},
		},
		{
			name:  "no rule, no wait",
			calls: []call{{"acme", "a@example.org", 0}, {"acme", "b@example.org", 0}, {"acme", "not an address", 0}},
			want:  []time.Duration{0, 0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb.FlushDB(context.Background())
			var got []time.Duration
			for _, c := range tt.calls {
				d, err := p.Reserve(context.Background(), c.tenant, c.rcpt, t0.Add(c.at))
				if err != nil {
					t.Fatalf("Reserve(%s, %s): %v", c.tenant, c.rcpt, err)
				}
				got = append(got, d)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Reserve waits = %v, want %v", got, tt.want)
			}
		})
	}
	if !p.Paces("acme", "gmail.com") || p.Paces("globex", "gmail.com") || !p.Paces("globex", "outlook.com") {
		t.Error("Paces does not match the rules")
	}
}

func TestDomain(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"ann@Example.ORG", "example.org"},
		{`"a@b"@gmail.com`, "gmail.com"},
		{"bob@gmail.com.", "gmail.com"},
		{"nobody", ""},
	} {
		if got := Domain(tt.in); got != tt.want {
			t.Errorf("Domain(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
