package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// The "posts" bucket remembers every post for PostsTTL: its fingerprint
// (so that an idempotency key reused for another post is refused) and,
// once fanned out, the mails and notifications it caused (so that a
// retried request is answered with the same mail ids and sends nothing,
// even after the streams' duplicate window). Its key is
// "<tenant>.<post id>".
const (
	postsBucket = "posts"
	// PostsTTL is how long a post's record, and so its idempotency key,
	// is kept.
	PostsTTL = 30 * 24 * time.Hour
)

// Post states.
const (
	// StateAccepted: stored on chatter.post.<tenant>, not yet fanned out.
	StateAccepted = "accepted"
	// StateFannedOut: every mail and notification has been stored.
	StateFannedOut = "fanned_out"
)

// ErrIdempotencyConflict is returned when an idempotency key (or post
// id) already names a different post.
var ErrIdempotencyConflict = errors.New("ingest: idempotency key already used for a different post")

// PostStatus is what chattermail knows of a post: the answer to
// POST /v1/posts and GET /v1/posts/{post_id}.
type PostStatus struct {
	// PostID identifies the post; a retry with the same idempotency key
	// gets the same one.
	PostID string `json:"post_id"`
	// MessageID is the RFC 5322 Message-ID, without angle brackets, that
	// every email copy of the post carries.
	MessageID string `json:"message_id"`
	// State is "accepted" (stored, fan-out pending) or "fanned_out".
	State string `json:"state"`
	// Thread names the thread.
	Thread ThreadRef `json:"thread"`
	// MailIDs are the ids of the emails created, one per recipient, in
	// recipient order; set once fanned out.
	MailIDs []string `json:"mail_ids"`
	// InboxUsers are the users who got an in-app notification instead.
	InboxUsers []string `json:"inbox_users"`
	// SuppressedMailIDs are the mail ids of recipients skipped because
	// their address is suppressed.
	SuppressedMailIDs []string `json:"suppressed_mail_ids"`
	// AcceptedAt is when the post was accepted.
	AcceptedAt time.Time `json:"accepted_at"`
	// FannedOutAt is when the fan-out completed.
	FannedOutAt *time.Time `json:"fanned_out_at,omitempty"`

	// Tenant owns the post.
	Tenant string `json:"-"`
	// Fingerprint is the SHA-256 of the post without its volatile fields.
	Fingerprint string `json:"-"`
}

// ThreadRef names a thread in API answers.
type ThreadRef struct {
	Model       string `json:"model"`
	ID          string `json:"id"`
	DisplayName string `json:"display_name,omitempty"`
}

// postRecord is PostStatus as stored.
type postRecord struct {
	PostStatus
	Tenant      string `json:"tenant"`
	Fingerprint string `json:"fingerprint"`
}

// fingerprint is the SHA-256, in hex, of p without the fields that
// differ between two submissions of the same post: post id, idempotency
// key, posted_at, source and inbound id.
func fingerprint(p *cmv1.ChatterPost) string {
	c := proto.Clone(p).(*cmv1.ChatterPost)
	c.PostId, c.IdempotencyKey, c.PostedAt, c.Source, c.InboundId = "", "", nil, cmv1.PostSource_POST_SOURCE_UNSPECIFIED, ""
	if c.Subtype == "" {
		c.Subtype = SubtypeComment
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%x", sum)
}

// posts is the "posts" bucket and the waiters of this process.
type posts struct {
	kv jetstream.KeyValue

	mu      sync.Mutex
	waiters map[string]*waiter
}

// waiter is the requests of this process waiting for one post's fan-out.
type waiter struct {
	done chan struct{}
	n    int
}

func openPosts(ctx context.Context, js jetstream.JetStream, replicas int) (*posts, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      postsBucket,
		Description: "chattermail: posts, their idempotency fingerprint and fan-out result",
		History:     1,
		TTL:         PostsTTL,
		Replicas:    max(replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: bucket %s: %w", postsBucket, err)
	}
	return &posts{kv: kv, waiters: map[string]*waiter{}}, nil
}

func postKey(tenant, postID string) string { return tenant + "." + postID }

// get returns the post's record, or nil when there is none.
func (ps *posts) get(ctx context.Context, tenant, postID string) (*PostStatus, uint64, error) {
	e, err := ps.kv.Get(ctx, postKey(tenant, postID))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("ingest: post record %s/%s: %w", tenant, postID, err)
	}
	var r postRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("ingest: post record %s/%s: %w", tenant, postID, err)
	}
	st := r.PostStatus
	st.Tenant, st.Fingerprint = r.Tenant, r.Fingerprint
	for _, l := range []*[]string{&st.MailIDs, &st.InboxUsers, &st.SuppressedMailIDs} {
		if *l == nil {
			*l = []string{}
		}
	}
	return &st, e.Revision(), nil
}

// create stores st unless the post already has a record, which it then
// returns with created false.
func (ps *posts) create(ctx context.Context, st *PostStatus) (*PostStatus, bool, error) {
	val, _ := json.Marshal(postRecord{PostStatus: *st, Tenant: st.Tenant, Fingerprint: st.Fingerprint})
	for {
		_, err := ps.kv.Create(ctx, postKey(st.Tenant, st.PostID), val)
		if err == nil {
			return st, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, false, fmt.Errorf("ingest: post record %s/%s: %w", st.Tenant, st.PostID, err)
		}
		old, _, err := ps.get(ctx, st.Tenant, st.PostID)
		if err != nil {
			return nil, false, err
		}
		if old != nil {
			return old, false, nil
		}
	}
}

// put stores st and wakes this process's waiters for it.
func (ps *posts) put(ctx context.Context, st *PostStatus) error {
	val, _ := json.Marshal(postRecord{PostStatus: *st, Tenant: st.Tenant, Fingerprint: st.Fingerprint})
	if _, err := ps.kv.Put(ctx, postKey(st.Tenant, st.PostID), val); err != nil {
		return fmt.Errorf("ingest: post record %s/%s: %w", st.Tenant, st.PostID, err)
	}
	ps.mu.Lock()
	if w, ok := ps.waiters[postKey(st.Tenant, st.PostID)]; ok {
		close(w.done)
		delete(ps.waiters, postKey(st.Tenant, st.PostID))
	}
	ps.mu.Unlock()
	return nil
}

// waitFannedOut returns the post's record once it is fanned out, or the
// latest record when wait passes first. A fan-out by this process wakes
// it at once; one by another replica is seen by polling.
func (ps *posts) waitFannedOut(ctx context.Context, tenant, postID string, wait time.Duration) (*PostStatus, error) {
	key := postKey(tenant, postID)
	deadline := time.Now().Add(wait)
	poll := 20 * time.Millisecond
	for {
		ps.mu.Lock()
		w, ok := ps.waiters[key]
		if !ok {
			w = &waiter{done: make(chan struct{})}
			ps.waiters[key] = w
		}
		w.n++
		ps.mu.Unlock()

		st, woken, err := ps.waitOnce(ctx, tenant, postID, w, min(poll, time.Until(deadline)))
		ps.mu.Lock()
		if w.n--; w.n == 0 && !woken && ps.waiters[key] == w {
			delete(ps.waiters, key)
		}
		ps.mu.Unlock()
		if err != nil || st != nil && st.State == StateFannedOut || time.Until(deadline) <= 0 || ctx.Err() != nil {
			return st, err
		}
		poll = min(poll*2, 500*time.Millisecond)
	}
}

// waitOnce reads the record, and unless it is fanned out waits up to d
// for w to be woken; it reports whether it was.
func (ps *posts) waitOnce(ctx context.Context, tenant, postID string, w *waiter, d time.Duration) (*PostStatus, bool, error) {
	st, _, err := ps.get(ctx, tenant, postID)
	if err != nil || st != nil && st.State == StateFannedOut || d <= 0 {
		return st, false, err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.done:
		st, _, err = ps.get(ctx, tenant, postID)
		return st, true, err
	case <-t.C:
	case <-ctx.Done():
	}
	return st, false, nil
}
