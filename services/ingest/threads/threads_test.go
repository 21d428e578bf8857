package threads_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var now = time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC)

func open(t *testing.T) *threads.Store {
	t.Helper()
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	s, err := threads.Open(context.Background(), js, threads.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	// Opening again is harmless.
	if _, err := threads.Open(context.Background(), js, threads.Options{}); err != nil {
		t.Fatalf("Open a second time = %v, want nil", err)
	}
	return s
}

func TestKey(t *testing.T) {
	key := regexp.MustCompile(`^acme\.[a-z2-7]{32}\.[a-z2-7]{32}$`)
	tests := []struct{ model, id string }{
		{"crm.lead", "42"},
		{"crm.lead", "4.2"},
		{"a b/c*>", "x y.z>*"},
		{"", ""},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		k := threads.Key("acme", tt.model, tt.id)
		if !key.MatchString(k) || seen[k] {
			t.Errorf("Key(acme, %q, %q) = %q, want a unique acme.<token>.<token>", tt.model, tt.id, k)
		}
		seen[k] = true
	}
	if threads.Key("acme", "crm.lead", "42") == threads.Key("globex", "crm.lead", "42") {
		t.Error("two tenants' threads share a key")
	}
}

func TestFollowUnfollowUnsubscribe(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	if _, err := s.Get(ctx, "acme", "crm.lead", "42"); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Get of a new thread = %v, want ErrNotFound", err)
	}
	th, err := s.Update(ctx, "acme", "crm.lead", "42", func(th *threads.Thread) error {
		for _, f := range []threads.Follower{
			{Email: "Ann@Example.org", Active: true},
			{Email: "carl@example.com", Internal: true, Preference: threads.PreferenceInbox, Active: true},
		} {
			if _, _, err := th.Follow(f, now, false); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || len(th.Followers) != 2 || th.Followers[0].Preference != threads.PreferenceEmail || !th.Followers[0].Since.Equal(now) {
		t.Fatalf("Update adding two followers = %+v, %v, want both, email by default, since now", th, err)
	}
	later := now.Add(time.Hour)
	th, _ = s.Update(ctx, "acme", "crm.lead", "42", func(th *threads.Thread) error {
		created, _, err := th.Follow(threads.Follower{Email: "ann@example.org", Name: "Ann", Active: false}, later, false)
		if created {
			t.Error("Follow of ann again = created, want updated")
		}
		return err
	})
	if f, _ := th.Lookup("ann@example.org"); f == nil || f.Name != "Ann" || f.Active || !f.Since.Equal(now) {
		t.Errorf("ann after an update = %+v, want name Ann, inactive, since the first follow", f)
	}

	// A one-click unsubscription outlives the followers posts carry; an
	// explicit follow lifts it.
	th, _ = s.Update(ctx, "acme", "crm.lead", "42", func(th *threads.Thread) error {
		th.Unsubscribe("carl@example.com", later)
		_, ignored, err := th.Follow(threads.Follower{Email: "carl@example.com", Active: true}, later, false)
		if !ignored {
			t.Error("Follow from a post of an unsubscribed address was not ignored")
		}
		return err
	})
	if f, _ := th.Lookup("carl@example.com"); f != nil || !th.IsUnsubscribed("carl@example.com") {
		t.Errorf("after carl unsubscribed: follower %+v, unsubscribed %v, want none and true", f, th.Unsubscribed)
	}
	th, _ = s.Update(ctx, "acme", "crm.lead", "42", func(th *threads.Thread) error {
		_, _, err := th.Follow(threads.Follower{Email: "carl@example.com", Active: true}, later, true)
		return err
	})
	if f, _ := th.Lookup("carl@example.com"); f == nil || th.IsUnsubscribed("carl@example.com") {
		t.Errorf("after carl followed explicitly: follower %+v, unsubscribed %v, want him back", f, th.Unsubscribed)
	}
	got, err := s.Get(ctx, "acme", "crm.lead", "42")
	if err != nil || got.Revision != th.Revision || len(got.Followers) != 2 {
		t.Errorf("Get = %+v, %v, want the last update (revision %d)", got, err, th.Revision)
	}
	if _, err := s.Get(ctx, "globex", "crm.lead", "42"); !errors.Is(err, threads.ErrNotFound) {
		t.Errorf("Get of acme's thread as globex = %v, want ErrNotFound", err)
	}

	rev := got.Revision
	th, err = s.Update(ctx, "acme", "crm.lead", "42", func(*threads.Thread) error { return threads.ErrNoChange })
	if err != nil || th.Revision != rev {
		t.Errorf("Update returning ErrNoChange = revision %d, %v, want %d unchanged", th.Revision, err, rev)
	}
	if _, err := s.Update(ctx, "acme", "crm.lead", "42", func(th *threads.Thread) error {
		_, _, err := th.Follow(threads.Follower{Email: "not an address"}, now, true)
		return err
	}); err == nil {
		t.Error("Follow of an invalid address = nil error")
	}
}

// Concurrent writers never lose each other's followers.
func TestUpdateIsOptimistic(t *testing.T) {
	s := open(t)
	var wg sync.WaitGroup
	const writers = 20
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Update(context.Background(), "acme", "crm.lead", "42", func(th *threads.Thread) error {
				_, _, err := th.Follow(threads.Follower{Email: fmt.Sprintf("w%d@example.org", i), Active: true}, now, true)
				return err
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	th, err := s.Get(context.Background(), "acme", "crm.lead", "42")
	if err != nil || len(th.Followers) != writers {
		t.Errorf("after %d concurrent follows: %d followers (%v), want %d", writers, len(th.Followers), err, writers)
	}
}

// A thread holds MaxFollowers followers, and they fit in one KV value.
func TestMaxFollowers(t *testing.T) {
	s := open(t)
	th, err := s.Update(context.Background(), "acme", "crm.lead", "big", func(th *threads.Thread) error {
		for i := range threads.MaxFollowers {
			f := threads.Follower{Email: fmt.Sprintf("firstname.lastname%04d@subsidiary.example.org", i), Name: fmt.Sprintf("Firstname Lastname %d", i),
				PartnerID: fmt.Sprint(100000 + i), Internal: true, Preference: threads.PreferenceInbox, Active: true}
			if _, _, err := th.Follow(f, now, true); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("storing a thread of MaxFollowers followers = %v", err)
	}
	if _, _, err := th.Follow(threads.Follower{Email: "one-more@example.org"}, now, true); !errors.Is(err, threads.ErrTooManyFollowers) {
		t.Errorf("Follow beyond MaxFollowers = %v, want ErrTooManyFollowers", err)
	}
	if _, _, err := th.Follow(threads.Follower{Email: "firstname.lastname0007@subsidiary.example.org", Name: "Seven"}, now, true); err != nil {
		t.Errorf("Follow updating a follower of a full thread = %v, want nil", err)
	}
}
