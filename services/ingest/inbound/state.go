package inbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/nats-io/nats.go/jetstream"
)

// KV buckets of the router's state.
const (
	// SeenBucket remembers processed Message-IDs for 30 days.
	SeenBucket = "inbound-seen"
	// RateBucket holds each sender's recent message times per tenant.
	RateBucket = "inbound-rate"
	// BounceBucket holds each recipient's bounce history per tenant.
	BounceBucket = "bounces"
)

// State is the router's durable state in JetStream KV, shared by every
// replica. It is safe for concurrent use.
type State struct {
	seen, rate, bounces jetstream.KeyValue
}

// OpenState creates the buckets if needed.
func OpenState(ctx context.Context, js jetstream.JetStream, replicas int) (*State, error) {
	open := func(name, desc string, ttl time.Duration) (jetstream.KeyValue, error) {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, Description: desc, History: 1,
			TTL: ttl, Replicas: max(replicas, 1), Storage: jetstream.FileStorage})
		if err != nil {
			return nil, fmt.Errorf("inbound: bucket %s: %w", name, err)
		}
		return kv, nil
	}
	var s State
	var err error
	if s.seen, err = open(SeenBucket, "chattermail: inbound Message-IDs already routed", 30*24*time.Hour); err != nil {
		return nil, err
	}
	if s.rate, err = open(RateBucket, "chattermail: inbound messages per sender (loop defence)", 7*24*time.Hour); err != nil {
		return nil, err
	}
	if s.bounces, err = open(BounceBucket, "chattermail: bounces per recipient", 90*24*time.Hour); err != nil {
		return nil, err
	}
	return &s, nil
}

func key(tenant, kind, v string) string { return tenant + "." + kvkey.Token(kind, v) }

// Seen reports whether tenant's Message-ID id was routed already.
func (s *State) Seen(ctx context.Context, tenant, id string) (bool, error) {
	_, err := s.seen.Get(ctx, key(tenant, "msgid", id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inbound: seen: %w", err)
	}
	return true, nil
}

// MarkSeen records tenant's Message-ID id as routed.
func (s *State) MarkSeen(ctx context.Context, tenant, id string) error {
	if _, err := s.seen.Put(ctx, key(tenant, "msgid", id), []byte("1")); err != nil {
		return fmt.Errorf("inbound: mark seen: %w", err)
	}
	return nil
}

// update applies change to the JSON list of times under k with
// compare-and-set, retrying on conflicts.
func update(ctx context.Context, kv jetstream.KeyValue, k string, change func([]record) []record) ([]record, error) {
	for range 20 {
		var recs []record
		var rev uint64
		e, err := kv.Get(ctx, k)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return nil, fmt.Errorf("inbound: get %s: %w", k, err)
		default:
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &recs)
		}
		recs = change(recs)
		val, _ := json.Marshal(recs)
		if rev == 0 {
			_, err = kv.Create(ctx, k, val)
		} else {
			_, err = kv.Update(ctx, k, val, rev)
		}
		if err == nil {
			return recs, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSeq(err) {
			return nil, fmt.Errorf("inbound: put %s: %w", k, err)
		}
	}
	return nil, fmt.Errorf("inbound: %s: too many concurrent updates", k)
}

func isWrongSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// record is one timed event.
type record struct {
	At   time.Time `json:"at"`
	Hard bool      `json:"hard,omitempty"`
}

// AllowSender counts one message of sender to tenant and reports whether
// it is within max per window (mail-rules §7).
func (s *State) AllowSender(ctx context.Context, tenant, sender string, limit int, window time.Duration, now time.Time) (bool, error) {
	allowed := false
	_, err := update(ctx, s.rate, key(tenant, "sender", sender), func(recs []record) []record {
		keep := recs[:0]
		for _, r := range recs {
			if now.Sub(r.At) < window {
				keep = append(keep, r)
			}
		}
		if allowed = len(keep) < limit; allowed {
			keep = append(keep, record{At: now})
		}
		return keep
	})
	return allowed, err
}

// CountBounce records a bounce of address and returns the number of hard
// bounces within window (soft bounces are kept but not counted).
func (s *State) CountBounce(ctx context.Context, tenant, address string, hard bool, window time.Duration, now time.Time) (int, error) {
	recs, err := update(ctx, s.bounces, key(tenant, "bounce", address), func(recs []record) []record {
		keep := recs[:0]
		for _, r := range recs {
			if now.Sub(r.At) < window {
				keep = append(keep, r)
			}
		}
		return append(keep, record{At: now, Hard: hard})
	})
	n := 0
	for _, r := range recs {
		if r.Hard {
			n++
		}
	}
	return n, err
}
