// Package suppression is the per-tenant list of addresses chattermail
// never emails: hard bounces, complaints, addresses an operator blocked.
// Fan-out reads it (a suppressed recipient gets a "suppressed" event
// instead of an email), the HTTP API lists, adds and clears it, and the
// inbound bounce handler writes it.
//
// The list lives in the JetStream KV bucket "suppression", one key per
// tenant and normalised address: "<tenant>.<token>", where the token is a
// hash of the address (see Key). The value is an Entry in JSON. Every
// replica of every service sees the same list; nothing is cached.
package suppression

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the JetStream KV bucket of the list.
const Bucket = "suppression"

// MaxReasonLen is the longest reason kept; longer reasons are cut.
const MaxReasonLen = 500

// Errors of the package.
var (
	// ErrInvalidAddress wraps an address that is not one plain addr-spec.
	ErrInvalidAddress = errors.New("suppression: invalid address")
	// ErrNotSuppressed is returned by Unsuppress for an address that is
	// not on the list.
	ErrNotSuppressed = errors.New("suppression: address is not suppressed")
)

// Entry is one suppressed address of a tenant.
type Entry struct {
	// Tenant owns the entry.
	Tenant string `json:"tenant"`
	// Address is the normalised address (mail-rules §2).
	Address string `json:"address"`
	// Reason says why, for example "5.1.1 user unknown".
	Reason string `json:"reason"`
	// Source names who added it: "api", "bounce", "complaint", "operator".
	Source string `json:"source"`
	// AddedAt is when the address was suppressed.
	AddedAt time.Time `json:"added_at"`
}

// List is a tenant-partitioned suppression list. It is safe for
// concurrent use.
type List struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// Options configure Open.
type Options struct {
	// Replicas is the bucket's JetStream replica count; default 1.
	Replicas int
	// Now is the clock that stamps AddedAt; default time.Now.
	Now func() time.Time
}

// Open creates the bucket if needed (idempotently) and returns the list.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*List, error) {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "chattermail: per-tenant suppressed addresses",
		History:     1,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("suppression: bucket %s: %w", Bucket, err)
	}
	return &List{kv: kv, now: o.Now}, nil
}

// Key is the KV key of address (any case; it is normalised) for tenant:
// "<tenant>.<32 characters of [a-z2-7]>".
func Key(tenant, address string) (string, error) {
	if err := bus.ValidTenant(tenant); err != nil {
		return "", fmt.Errorf("suppression: %w", err)
	}
	norm, err := kvkey.NormalizeAddress(address)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidAddress, err)
	}
	return tenant + "." + kvkey.Token("suppression", norm), nil
}

// Suppress adds address to tenant's list with a reason and a source, and
// returns the entry and whether it was added now. An address already on
// the list keeps its first entry (created is false), so a bounce handler
// may call Suppress for every bounce.
func (l *List) Suppress(ctx context.Context, tenant, address, reason, source string) (e Entry, created bool, err error) {
	key, err := Key(tenant, address)
	if err != nil {
		return Entry{}, false, err
	}
	norm, _ := kvkey.NormalizeAddress(address)
	if len(reason) > MaxReasonLen {
		reason = reason[:MaxReasonLen]
	}
	e = Entry{Tenant: tenant, Address: norm, Reason: strings.ToValidUTF8(reason, ""), Source: source, AddedAt: l.now().UTC()}
	val, _ := json.Marshal(e)
	for {
		_, err = l.kv.Create(ctx, key, val)
		if err == nil {
			return e, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return Entry{}, false, fmt.Errorf("suppression: add %s: %w", key, err)
		}
		old, found, gerr := l.IsSuppressed(ctx, tenant, address)
		if gerr != nil {
			return Entry{}, false, gerr
		}
		if found {
			return old, false, nil
		}
		// Deleted between Create and Get: try again.
	}
}

// Unsuppress removes address from tenant's list; ErrNotSuppressed when it
// was not there.
func (l *List) Unsuppress(ctx context.Context, tenant, address string) error {
	key, err := Key(tenant, address)
	if err != nil {
		return err
	}
	if _, err := l.kv.Get(ctx, key); errors.Is(err, jetstream.ErrKeyNotFound) {
		return ErrNotSuppressed
	} else if err != nil {
		return fmt.Errorf("suppression: get %s: %w", key, err)
	}
	// Purge keeps a single delete marker instead of the entry's history.
	if err := l.kv.Purge(ctx, key); err != nil {
		return fmt.Errorf("suppression: remove %s: %w", key, err)
	}
	return nil
}

// IsSuppressed reports whether address is on tenant's list, with its
// entry. An invalid address is never suppressed and gives
// ErrInvalidAddress.
func (l *List) IsSuppressed(ctx context.Context, tenant, address string) (Entry, bool, error) {
	key, err := Key(tenant, address)
	if err != nil {
		return Entry{}, false, err
	}
	entry, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("suppression: get %s: %w", key, err)
	}
	var e Entry
	if err := json.Unmarshal(entry.Value(), &e); err != nil {
		return Entry{}, false, fmt.Errorf("suppression: entry %s: %w", key, err)
	}
	return e, true, nil
}

// Entries returns tenant's list sorted by address.
func (l *List) Entries(ctx context.Context, tenant string) ([]Entry, error) {
	if err := bus.ValidTenant(tenant); err != nil {
		return nil, fmt.Errorf("suppression: %w", err)
	}
	lister, err := l.kv.ListKeysFiltered(ctx, tenant+".>")
	if err != nil {
		return nil, fmt.Errorf("suppression: list %s: %w", tenant, err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	out := []Entry{}
	for _, k := range keys {
		entry, err := l.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("suppression: get %s: %w", k, err)
		}
		var e Entry
		if err := json.Unmarshal(entry.Value(), &e); err != nil {
			return nil, fmt.Errorf("suppression: entry %s: %w", k, err)
		}
		if e.Tenant == tenant {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Address, b.Address) })
	return out, nil
}
