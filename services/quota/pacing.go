package quota

import (
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/redis/go-redis/v9"
)

//go:embed pace.lua
var paceLua string

// PaceKey is the Redis key of tenant's pacing rule for domain, for example
// "cm:{acme}:pace:gmail.com": the rule's theoretical arrival time (GCRA).
func PaceKey(tenant, domain string) string { return "cm:{" + tenant + "}:pace:" + domain }

// GlobalPaceKey is the Redis key of the pacing rule for domain that every
// tenant shares, for example "cm:{pace:gmail.com}". It has its own hash
// tag: a Redis Cluster spreads the domains over its nodes.
func GlobalPaceKey(domain string) string { return "cm:{pace:" + domain + "}" }

// Pacer spaces the mail sent to one recipient domain (a mailbox provider)
// by the pacing rules of the tenants file (config.Pacing): the tenant's
// own rules and the global ones, both applying when both name the domain.
// Each rule is a GCRA in Redis (pace.lua) whose slots are reserved: a mail
// is told how long to wait, never refused. It is safe for concurrent use,
// from any number of processes sharing one Redis.
type Pacer struct {
	rdb    redis.UniversalClient
	script *redis.Script
	global map[string]config.Pacing
	tenant map[string]map[string]config.Pacing
}

// NewPacer returns a Pacer for cfg's rules.
func NewPacer(rdb redis.UniversalClient, cfg *config.Config) *Pacer {
	p := &Pacer{rdb: rdb, script: redis.NewScript(paceLua),
		global: map[string]config.Pacing{}, tenant: map[string]map[string]config.Pacing{}}
	for _, r := range cfg.Pacing {
		p.global[r.Domain] = r
	}
	for id, t := range cfg.Tenants {
		for _, r := range t.Pacing {
			if p.tenant[id] == nil {
				p.tenant[id] = map[string]config.Pacing{}
			}
			p.tenant[id][r.Domain] = r
		}
	}
	return p
}

// Domain returns the lower-cased domain of an email address, "" when it
// has none.
func Domain(email string) string {
	at := strings.LastIndexByte(email, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(email[at+1:], "."))
}

// Paces reports whether a rule applies to tenant's mail to domain.
func (p *Pacer) Paces(tenant, domain string) bool {
	_, g := p.global[domain]
	_, t := p.tenant[tenant][domain]
	return g || t
}

// Reserve takes the next slot of every rule that applies to tenant's mail
// to recipient, at now, and returns how long the mail must wait for the
// latest of them: 0 when it may go at once (also when no rule applies,
// without asking Redis).
func (p *Pacer) Reserve(ctx context.Context, tenant, recipient string, now time.Time) (time.Duration, error) {
	domain := Domain(recipient)
	var wait time.Duration
	for _, r := range []struct {
		key  string
		rule config.Pacing
		ok   bool
	}{
		{PaceKey(tenant, domain), p.tenant[tenant][domain], p.tenant[tenant] != nil},
		{GlobalPaceKey(domain), p.global[domain], true},
	} {
		if !r.ok || r.rule.PerMinute <= 0 {
			continue
		}
		d, err := p.reserve(ctx, r.key, r.rule, now)
		if err != nil {
			return 0, err
		}
		wait = max(wait, d)
	}
	return wait, nil
}

func (p *Pacer) reserve(ctx context.Context, key string, r config.Pacing, now time.Time) (time.Duration, error) {
	t := r.Interval().Microseconds()
	tau := int64(max(r.Burst, 1)-1) * t
	us, err := p.script.Run(ctx, p.rdb, []string{key}, now.UnixMicro(), t, tau).Int64()
	if err != nil {
		return 0, fmt.Errorf("%w: pace %s: %w", ErrLedger, key, err)
	}
	return time.Duration(us) * time.Microsecond, nil
}
