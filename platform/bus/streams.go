package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamSpec describes one stream of the contract.
type StreamSpec struct {
	// Name is the stream name, for example "COMPOSE".
	Name string
	// Subjects the stream captures.
	Subjects []string
	// WorkQueue streams delete a message once its one consumer acks it;
	// the others keep messages by limits (age, size) and can be replayed.
	WorkQueue bool
	// MaxAge bounds how long a limits-based stream keeps messages; zero
	// keeps them until MaxBytes.
	MaxAge time.Duration
}

// Stream names.
const (
	StreamPosts     = "POSTS"
	StreamCompose   = "COMPOSE"
	StreamRewritten = "REWRITTEN"
	StreamHeld      = "HELD"
	StreamReady     = "READY"
	StreamInbound   = "INBOUND"
	StreamEvents    = "EVENTS"
	StreamDLQ       = "DLQ"
)

// Streams is the contract's list of streams (design.md, "Contracts").
var Streams = []StreamSpec{
	{Name: StreamPosts, Subjects: []string{PostPrefix + ".*"}, WorkQueue: true},
	{Name: StreamCompose, Subjects: []string{ComposePrefix + ".*"}, WorkQueue: true},
	{Name: StreamRewritten, Subjects: []string{RewrittenPrefix + ".*"}, WorkQueue: true},
	{Name: StreamHeld, Subjects: []string{HeldPrefix + ".*"}, WorkQueue: true},
	{Name: StreamReady, Subjects: []string{ReadyPrefix + ".*"}, WorkQueue: true},
	{Name: StreamInbound, Subjects: []string{InboundPrefix + ".*"}, WorkQueue: true},
	{Name: StreamEvents, Subjects: []string{"events.>"}, MaxAge: 30 * 24 * time.Hour},
	{Name: StreamDLQ, Subjects: []string{DLQPrefix + ".>"}, MaxAge: 90 * 24 * time.Hour},
}

// StreamOptions tune every stream EnsureStreams declares.
type StreamOptions struct {
	// Replicas is the JetStream replica count; default 1. Production
	// clusters use 3.
	Replicas int
	// DuplicateWindow is how long a Nats-Msg-Id is remembered; default 10
	// minutes, comfortably longer than a consumer's AckWait plus a restart.
	DuplicateWindow time.Duration
	// Memory stores streams in memory instead of files (tests, benchmarks).
	Memory bool
}

// EnsureStreams creates or updates every stream of the contract. It is
// idempotent, so every service calls it at start-up.
func (b *Bus) EnsureStreams(ctx context.Context, opts StreamOptions) error {
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.DuplicateWindow <= 0 {
		opts.DuplicateWindow = 10 * time.Minute
	}
	storage := jetstream.FileStorage
	if opts.Memory {
		storage = jetstream.MemoryStorage
	}
	for _, s := range Streams {
		cfg := jetstream.StreamConfig{
			Name:       s.Name,
			Subjects:   s.Subjects,
			Storage:    storage,
			Replicas:   opts.Replicas,
			Duplicates: opts.DuplicateWindow,
			MaxAge:     s.MaxAge,
			Discard:    jetstream.DiscardOld,
			Retention:  jetstream.LimitsPolicy,
		}
		if s.WorkQueue {
			cfg.Retention = jetstream.WorkQueuePolicy
			// A work queue must never drop unprocessed mail to make room.
			cfg.Discard = jetstream.DiscardNew
		}
		if _, err := b.js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("bus: ensure stream %s: %w", s.Name, err)
		}
	}
	return nil
}
