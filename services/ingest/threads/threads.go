// Package threads stores discussion threads and their followers in the
// JetStream KV bucket "threads", so that every ingest replica resolves the
// same recipients and nothing lives only in a process's memory.
//
// A thread is keyed "<tenant>.<model token>.<id token>" (see Key): the
// tokens are hashes of the thread's model and id, which may hold any
// character. The value is a Thread in JSON: its followers, each with a
// notification preference, subtypes and an active flag, and the
// addresses that unsubscribed through a one-click link. Every change is a
// read-modify-write guarded by the KV revision (optimistic concurrency):
// two replicas changing one thread never lose each other's change.
package threads

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the JetStream KV bucket of threads.
const Bucket = "threads"

// Limits of one thread.
const (
	// MaxFollowers is the most followers a thread holds; a change that
	// would go beyond fails with ErrTooManyFollowers.
	MaxFollowers = 5000
	// maxValueBytes keeps a thread record under NATS's default 1 MiB
	// payload limit.
	maxValueBytes = 1000 << 10
	// maxAttempts bounds the retries of a change that keeps conflicting.
	maxAttempts = 50
)

// Errors of the package.
var (
	// ErrNotFound is returned for a thread that has never been written.
	ErrNotFound = errors.New("threads: no such thread")
	// ErrTooManyFollowers is returned by a change that would leave a
	// thread with more than MaxFollowers followers.
	ErrTooManyFollowers = fmt.Errorf("threads: a thread has at most %d followers", MaxFollowers)
	// ErrNoChange may be returned by the function given to Update to
	// leave the thread as it is; Update then returns the thread unchanged
	// and no error.
	ErrNoChange = errors.New("threads: no change")
	// ErrConflict is returned when a change kept losing the race against
	// other writers.
	ErrConflict = errors.New("threads: too many concurrent changes")
)

// Preference is how a follower wants to hear of new messages.
type Preference string

// Preferences (mail-rules §6).
const (
	// PreferenceEmail sends one email per message; the default.
	PreferenceEmail Preference = "email"
	// PreferenceInbox publishes an in-app notification instead, for
	// internal followers; external partners always get email.
	PreferenceInbox Preference = "inbox"
)

// Follower is a partner subscribed to a thread.
type Follower struct {
	// Email is the address as the application gave it; mail goes to it.
	Email string `json:"email"`
	// Name is the display name; may be empty.
	Name string `json:"name,omitempty"`
	// PartnerID is the application's id for the partner; may be empty.
	PartnerID string `json:"partner_id,omitempty"`
	// Internal is true for the application's own users; notes reach
	// internal followers only.
	Internal bool `json:"internal"`
	// Preference is email (default) or inbox.
	Preference Preference `json:"preference"`
	// Subtypes the follower receives; empty means every subtype.
	Subtypes []string `json:"subtypes,omitempty"`
	// Active followers are notified; inactive ones are kept but never
	// notified, not even when a post names them.
	Active bool `json:"active"`
	// Since is when the partner first followed the thread.
	Since time.Time `json:"since"`
}

// Unsubscription records an address that left the thread through a
// one-click unsubscribe link. Followers carried by later posts do not
// bring it back; only an explicit follow through the API does.
type Unsubscription struct {
	// Address is the normalised address.
	Address string `json:"address"`
	// At is when it unsubscribed.
	At time.Time `json:"at"`
}

// Thread is one discussion thread of a tenant and its followers.
type Thread struct {
	// Tenant owns the thread.
	Tenant string `json:"tenant"`
	// Model is the document type, for example "crm.lead".
	Model string `json:"model"`
	// ID is the document's id within its model.
	ID string `json:"id"`
	// DisplayName is what a person calls the document.
	DisplayName string `json:"display_name,omitempty"`
	// Followers in the order they first followed.
	Followers []Follower `json:"followers"`
	// Unsubscribed lists the addresses that unsubscribed by link.
	Unsubscribed []Unsubscription `json:"unsubscribed,omitempty"`
	// UpdatedAt is when the thread last changed.
	UpdatedAt time.Time `json:"updated_at"`
	// Revision is the KV revision the thread was read at.
	Revision uint64 `json:"-"`

	index map[string]int // normalised address -> position in Followers
}

// Key is the KV key of a thread: "<tenant>.<model token>.<id token>",
// each token 32 characters of [a-z2-7] (see kvkey.Token).
func Key(tenant, model, id string) string {
	return tenant + "." + kvkey.Token("model", model) + "." + kvkey.Token("thread", model, id)
}

// Lookup returns the follower with the normalised address addr and its
// position, or nil and -1.
func (t *Thread) Lookup(addr string) (*Follower, int) {
	t.reindex()
	i, ok := t.index[addr]
	if !ok {
		return nil, -1
	}
	return &t.Followers[i], i
}

func (t *Thread) reindex() {
	if t.index != nil && len(t.index) == len(t.Followers) {
		return
	}
	t.index = make(map[string]int, len(t.Followers))
	for i, f := range t.Followers {
		if a, err := kvkey.NormalizeAddress(f.Email); err == nil {
			t.index[a] = i
		}
	}
}

// IsUnsubscribed reports whether the normalised address addr left the
// thread by link.
func (t *Thread) IsUnsubscribed(addr string) bool {
	return slices.ContainsFunc(t.Unsubscribed, func(u Unsubscription) bool { return u.Address == addr })
}

// Follow adds f or updates the follower with its address, and reports
// whether it was added. Since is kept from the existing follower (or set
// to now for a new one). An explicit follow (an API call) also clears an
// unsubscription; a follower carried by a post (explicit false) whose
// address unsubscribed is ignored, and Follow returns ignored true.
func (t *Thread) Follow(f Follower, now time.Time, explicit bool) (created, ignored bool, err error) {
	addr, err := kvkey.NormalizeAddress(f.Email)
	if err != nil {
		return false, false, fmt.Errorf("threads: follower %w", err)
	}
	if t.IsUnsubscribed(addr) {
		if !explicit {
			return false, true, nil
		}
		t.Unsubscribed = slices.DeleteFunc(t.Unsubscribed, func(u Unsubscription) bool { return u.Address == addr })
	}
	if f.Preference == "" {
		f.Preference = PreferenceEmail
	}
	if old, i := t.Lookup(addr); old != nil {
		f.Since = old.Since
		t.Followers[i] = f
		return false, false, nil
	}
	if len(t.Followers) >= MaxFollowers {
		return false, false, ErrTooManyFollowers
	}
	f.Since = now.UTC()
	t.reindex()
	t.Followers = append(t.Followers, f)
	t.index[addr] = len(t.Followers) - 1
	return true, false, nil
}

// Unfollow removes the follower with the normalised address addr and
// reports whether there was one.
func (t *Thread) Unfollow(addr string) bool {
	_, i := t.Lookup(addr)
	if i < 0 {
		return false
	}
	t.Followers = slices.Delete(t.Followers, i, i+1)
	t.index = nil
	return true
}

// Unsubscribe removes the follower with the normalised address addr, if
// any, and records the unsubscription. It reports false when addr had
// already unsubscribed.
func (t *Thread) Unsubscribe(addr string, now time.Time) bool {
	removed := t.Unfollow(addr)
	if t.IsUnsubscribed(addr) {
		return removed
	}
	t.Unsubscribed = append(t.Unsubscribed, Unsubscription{Address: addr, At: now.UTC()})
	return true
}

// Store reads and changes threads. It is safe for concurrent use.
type Store struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// Options configure Open.
type Options struct {
	// Replicas is the bucket's JetStream replica count; default 1.
	Replicas int
	// Now is the clock that stamps changes; default time.Now.
	Now func() time.Time
}

// Open creates the bucket if needed (idempotently) and returns the store.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Store, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "chattermail: threads and their followers",
		History:     1,
		Replicas:    max(o.Replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("threads: bucket %s: %w", Bucket, err)
	}
	return &Store{kv: kv, now: o.Now}, nil
}

// Get returns the thread, or ErrNotFound.
func (s *Store) Get(ctx context.Context, tenant, model, id string) (*Thread, error) {
	if err := bus.ValidTenant(tenant); err != nil {
		return nil, fmt.Errorf("threads: %w", err)
	}
	t, err := s.GetKey(ctx, Key(tenant, model, id))
	if err != nil {
		return nil, err
	}
	if t.Tenant != tenant || t.Model != model || t.ID != id {
		return nil, ErrNotFound
	}
	return t, nil
}

// GetKey returns the thread stored under key, or ErrNotFound.
func (s *Store) GetKey(ctx context.Context, key string) (*Thread, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("threads: get %s: %w", key, err)
	}
	var t Thread
	if err := json.Unmarshal(e.Value(), &t); err != nil {
		return nil, fmt.Errorf("threads: thread %s: %w", key, err)
	}
	t.Revision = e.Revision()
	return &t, nil
}

// Update applies change to the thread (a new, empty one when it does not
// exist yet) and stores the result if the thread did not change
// meanwhile; otherwise it reads the thread again and repeats, so change
// must have no other effect than on the thread and may run several
// times. change may return ErrNoChange to store nothing. Update returns
// the thread as stored.
func (s *Store) Update(ctx context.Context, tenant, model, id string, change func(*Thread) error) (*Thread, error) {
	if err := bus.ValidTenant(tenant); err != nil {
		return nil, fmt.Errorf("threads: %w", err)
	}
	key := Key(tenant, model, id)
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		t, err := s.GetKey(ctx, key)
		if errors.Is(err, ErrNotFound) {
			t, err = &Thread{Tenant: tenant, Model: model, ID: id, Followers: []Follower{}}, nil
		}
		if err != nil {
			return nil, err
		}
		if err := change(t); errors.Is(err, ErrNoChange) {
			return t, nil
		} else if err != nil {
			return nil, err
		}
		t.UpdatedAt = s.now().UTC()
		val, err := json.Marshal(t)
		if err != nil {
			return nil, fmt.Errorf("threads: encode %s: %w", key, err)
		}
		if len(val) > maxValueBytes {
			return nil, fmt.Errorf("%w (the record is %d bytes)", ErrTooManyFollowers, len(val))
		}
		var rev uint64
		if t.Revision == 0 {
			rev, err = s.kv.Create(ctx, key, val)
		} else {
			rev, err = s.kv.Update(ctx, key, val, t.Revision)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			// Another writer won: read again after a short random pause.
			time.Sleep(time.Duration(rand.IntN(attempt*2+1)) * time.Millisecond)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("threads: write %s: %w", key, err)
		}
		t.Revision = rev
		return t, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrConflict, key)
}
