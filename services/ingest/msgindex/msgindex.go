// Package msgindex maps the RFC 5322 Message-ID of every post chattermail
// sent to the tenant, thread and post it belongs to, so that a reply whose
// In-Reply-To or References names it can be routed back to its thread
// (mail-rules §7).
//
// Fan-out writes one entry per post (every copy of a post shares its
// Message-ID) in the JetStream KV bucket "msgids", under the key
// "<tenant>.<token>", where the token is a hash of the Message-ID (see
// Key). The value is an Entry in JSON. Entries never expire.
package msgindex

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the JetStream KV bucket of the index.
const Bucket = "msgids"

// ErrNotFound is returned by Lookup for a Message-ID chattermail did not
// send for the tenant.
var ErrNotFound = errors.New("msgindex: unknown Message-ID")

// Entry is what the index knows of one Message-ID.
type Entry struct {
	// Tenant owns the post.
	Tenant string `json:"tenant"`
	// MessageID is the Message-ID without angle brackets.
	MessageID string `json:"message_id"`
	// PostID is the post the Message-ID was made for.
	PostID string `json:"post_id"`
	// Model, ThreadID and DisplayName name the thread.
	Model       string `json:"model"`
	ThreadID    string `json:"thread_id"`
	DisplayName string `json:"display_name,omitempty"`
	// At is when the post was fanned out.
	At time.Time `json:"at"`
}

// Index reads and writes the bucket. It is safe for concurrent use.
type Index struct {
	kv jetstream.KeyValue
}

// Open creates the bucket if needed (idempotently) with replicas
// replicas (default 1) and returns the index.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Index, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "chattermail: Message-ID -> tenant, thread and post",
		History:     1,
		Replicas:    max(replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("msgindex: bucket %s: %w", Bucket, err)
	}
	return &Index{kv: kv}, nil
}

// Bind returns an index on an existing bucket, for readers that do not
// create it (the inbound reply router).
func Bind(ctx context.Context, js jetstream.JetStream) (*Index, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		return nil, fmt.Errorf("msgindex: bucket %s: %w", Bucket, err)
	}
	return &Index{kv: kv}, nil
}

// Key is the KV key of messageID (with or without angle brackets) for
// tenant: "<tenant>.<32 characters of [a-z2-7]>". Message-IDs are
// compared exactly, angle brackets and surrounding space aside.
func Key(tenant, messageID string) (string, error) {
	if err := bus.ValidTenant(tenant); err != nil {
		return "", fmt.Errorf("msgindex: %w", err)
	}
	id := Trim(messageID)
	if id == "" {
		return "", errors.New("msgindex: empty Message-ID")
	}
	return tenant + "." + kvkey.Token("msgid", id), nil
}

// Trim drops the angle brackets and surrounding white space of a
// Message-ID.
func Trim(id string) string {
	id = strings.TrimSpace(id)
	if strings.HasPrefix(id, "<") && strings.HasSuffix(id, ">") {
		id = id[1 : len(id)-1]
	}
	return id
}

// Put records e. Writing the same entry again is harmless.
func (ix *Index) Put(ctx context.Context, e Entry) error {
	e.MessageID = Trim(e.MessageID)
	key, err := Key(e.Tenant, e.MessageID)
	if err != nil {
		return err
	}
	val, _ := json.Marshal(e)
	if _, err := ix.kv.Put(ctx, key, val); err != nil {
		return fmt.Errorf("msgindex: put %s: %w", key, err)
	}
	return nil
}

// Lookup returns the entry of messageID for tenant, or ErrNotFound. A
// Message-ID another tenant sent is not found.
func (ix *Index) Lookup(ctx context.Context, tenant, messageID string) (Entry, error) {
	key, err := Key(tenant, messageID)
	if err != nil {
		return Entry{}, err
	}
	kve, err := ix.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{}, ErrNotFound
	}
	if err != nil {
		return Entry{}, fmt.Errorf("msgindex: get %s: %w", key, err)
	}
	var e Entry
	if err := json.Unmarshal(kve.Value(), &e); err != nil {
		return Entry{}, fmt.Errorf("msgindex: entry %s: %w", key, err)
	}
	if e.Tenant != tenant || e.MessageID != Trim(messageID) {
		return Entry{}, ErrNotFound
	}
	return e, nil
}

// Lookup finds messageID for tenant in the bucket of js: the one-call
// form of Bind and Index.Lookup for the inbound reply router.
func Lookup(ctx context.Context, js jetstream.JetStream, tenant, messageID string) (Entry, error) {
	ix, err := Bind(ctx, js)
	if err != nil {
		return Entry{}, err
	}
	return ix.Lookup(ctx, tenant, messageID)
}
