package sender

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrClaimed: another sender worker holds the mail right now; the ready
// message is retried after a while instead of being delivered twice.
var ErrClaimed = errors.New("sender: mail held by another sender")

// claim takes key in the claims bucket for this process, or fails with
// ErrClaimed when another process holds it. The claim is refreshed every
// third of ClaimTTL until release is called, which deletes it; a process
// that dies leaves a claim that expires after ClaimTTL.
func (s *Service) claim(ctx context.Context, key string) (release func(), err error) {
	rev, err := s.claims.Create(ctx, key, []byte(s.holder))
	if errors.Is(err, jetstream.ErrKeyExists) {
		holder := "?"
		if e, gerr := s.claims.Get(ctx, key); gerr == nil {
			holder = string(e.Value())
		}
		return nil, fmt.Errorf("%w (%s)", ErrClaimed, holder)
	}
	if err != nil {
		return nil, fmt.Errorf("sender: claim %s: %w", key, err)
	}
	done := make(chan struct{})
	refreshed := make(chan uint64, 1)
	go func() {
		defer close(refreshed)
		t := time.NewTicker(max(s.o.ClaimTTL/3, 10*time.Millisecond))
		defer t.Stop()
		r := rev
		for {
			select {
			case <-done:
				refreshed <- r
				return
			case <-t.C:
				if nr, err := s.claims.Update(ctx, key, []byte(s.holder), r); err == nil {
					r = nr
				} else {
					s.o.Log.Warn("claim refresh failed", "key", key, "err", err)
				}
			}
		}
	}()
	return func() {
		close(done)
		r := <-refreshed
		// Only our own claim is deleted: a claim that expired and was
		// taken by another process has another revision.
		if err := s.claims.Delete(context.WithoutCancel(ctx), key, jetstream.LastRevision(r)); err != nil {
			s.o.Log.Debug("claim release failed; it expires by itself", "key", key, "err", err)
		}
	}, nil
}
