package client_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/client"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func start(t *testing.T) (*chattermail, *client.Client, *nats.Conn) {
	t.Helper()
	cm, err := startChattermail()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", cm.Log.String())
		}
		cm.Close()
	})
	nc, err := nats.Connect(cm.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c, err := client.New(nc, "acme")
	if err != nil {
		t.Fatal(err)
	}
	return cm, c, nc
}

func ticketPost(key string, followers ...string) *cmv1.ChatterPost {
	p := &cmv1.ChatterPost{
		Thread:         &cmv1.ThreadRef{Model: "helpdesk.ticket", Id: "7"},
		Author:         &cmv1.Partner{Name: "Desk Bot", Email: "bot@example.com", Internal: true},
		Subject:        "Ticket updated",
		BodyText:       "We are on it.",
		IdempotencyKey: key,
	}
	for _, f := range followers {
		p.Followers = append(p.Followers, &cmv1.Follower{Partner: &cmv1.Partner{Email: f}})
	}
	return p
}

func TestPost(t *testing.T) {
	_, c, nc := start(t)
	ctx := context.Background()
	a, err := c.Post(ctx, ticketPost("k1", "dora@customer.example", "bot@example.com", "fay@customer.example"))
	if err != nil || len(a.GetMailIds()) != 2 || a.GetMessageId() != a.GetPostId()+"@example.com" {
		t.Fatalf("Post = %v, %v, want 2 mail ids (dora, fay; not the author) and the Message-ID", a, err)
	}
	again, err := c.Post(ctx, ticketPost("k1", "dora@customer.example", "bot@example.com", "fay@customer.example"))
	if err != nil || !proto.Equal(again, a) {
		t.Errorf("Post again with key k1 = %v, %v, want the first answer %v", again, err, a)
	}
	// The thread keeps its followers: a post without any reaches them.
	next, err := c.Post(ctx, ticketPost("k2"))
	if err != nil || len(next.GetMailIds()) != 2 {
		t.Errorf("Post without followers on the same thread = %v, %v, want the thread's 2 followers", next, err)
	}

	refusals := []struct {
		name string
		post *cmv1.ChatterPost
		want string
	}{
		{"no author", &cmv1.ChatterPost{Thread: &cmv1.ThreadRef{Model: "m", Id: "1"}, Subject: "x"}, "author is required"},
		{"same key, another post", func() *cmv1.ChatterPost { p := ticketPost("k1"); p.Subject = "Other"; return p }(), "idempotency key"},
	}
	for _, tt := range refusals {
		if a, err := c.Post(ctx, tt.post); !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Post(%s) = %v, %v, want ErrRefused with %q", tt.name, a, err, tt.want)
		}
	}
	if _, err := c.Post(ctx, &cmv1.ChatterPost{Tenant: "globex"}); err == nil || errors.Is(err, client.ErrRefused) {
		t.Errorf("Post of a globex post on an acme client = %v, want a client-side error", err)
	}

	// Requests that do not come from the client are answered too.
	raw := []struct {
		name, subject string
		data          []byte
		want          string
	}{
		{"not protobuf", "api.post.acme", []byte("\xff\xff"), "not a protobuf"},
		{"unknown tenant", "api.post.initech", nil, `unknown tenant "initech"`},
		{"another tenant's post", "api.post.acme", func() []byte { b, _ := proto.Marshal(&cmv1.ChatterPost{Tenant: "globex"}); return b }(), `tenant "globex"`},
	}
	for _, tt := range raw {
		msg, err := nc.Request(tt.subject, tt.data, 10*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", tt.name, err)
		}
		var a cmv1.PostAccepted
		if err := proto.Unmarshal(msg.Data, &a); err != nil || !strings.Contains(a.GetError(), tt.want) || a.GetPostId() != "" {
			t.Errorf("request %s on %s = %v (%v), want only an error with %q", tt.name, tt.subject, &a, err, tt.want)
		}
	}
}

func TestPublishAndReplay(t *testing.T) {
	_, c, _ := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Publish(ctx, ticketPost("pub-1", "dora@customer.example", "fay@customer.example")); err != nil {
		t.Fatal(err)
	}
	// Replay from the start: the two composed events.
	var got []client.Event
	err := c.ReplayMailEvents(ctx, client.From{}, func(e client.Event) error {
		got = append(got, e)
		if len(got) == 2 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("ReplayMailEvents = %v", err)
	}
	var rcpts []string
	for _, e := range got {
		rcpts = append(rcpts, e.GetRecipient())
		if e.GetOutcome() != cmv1.Outcome_OUTCOME_COMPOSED || e.Subject != "events.mail.acme.composed" || e.Sequence == 0 {
			t.Errorf("replayed event = %+v, want a composed event with its sequence", e)
		}
	}
	slices.Sort(rcpts)
	if !slices.Equal(rcpts, []string{"dora@customer.example", "fay@customer.example"}) {
		t.Errorf("replayed recipients = %q, want dora and fay", rcpts)
	}

	// Resuming after the first event gives the second, then waits for
	// new ones: a post made meanwhile arrives.
	last := slices.MaxFunc(got, func(a, b client.Event) int { return int(a.Sequence) - int(b.Sequence) })
	first := slices.MinFunc(got, func(a, b client.Event) int { return int(a.Sequence) - int(b.Sequence) })
	var resumed []client.Event
	posted := false
	err = c.ReplayMailEvents(ctx, client.From{Sequence: first.Sequence + 1, Outcome: "composed"}, func(e client.Event) error {
		resumed = append(resumed, e)
		if !posted {
			posted = true
			if err := c.Publish(ctx, ticketPost("pub-2")); err != nil {
				return err
			}
		}
		if len(resumed) == 3 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) || resumed[0].Sequence != last.Sequence || resumed[2].GetPostId() == first.GetPostId() {
		t.Errorf("ReplayMailEvents from sequence %d = %d events (%v), want the second event then the new post's", first.Sequence+1, len(resumed), err)
	}
}

var errStop = errors.New("stop")

func TestSubscribeInbox(t *testing.T) {
	_, c, _ := start(t)
	got := make(chan *cmv1.InboxNotification, 1)
	sub, err := c.SubscribeInbox("12", func(n *cmv1.InboxNotification) { got <- n })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	p := ticketPost("inbox-1")
	p.Followers = []*cmv1.Follower{{Partner: &cmv1.Partner{Email: "eve@example.com", PartnerId: "12", Internal: true},
		Preference: cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX}}
	a, err := c.Post(context.Background(), p)
	if err != nil || len(a.GetMailIds()) != 0 {
		t.Fatalf("Post to an inbox follower = %v, %v, want no mail", a, err)
	}
	select {
	case n := <-got:
		if n.GetUser() != "12" || n.GetPostId() != a.GetPostId() || n.GetSubject() != "Ticket updated" {
			t.Errorf("inbox notification = %v, want user 12, post %s", n, a.GetPostId())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no inbox notification")
	}
}

func TestNew(t *testing.T) {
	if _, err := client.New(nil, "acme"); err == nil {
		t.Error("New(nil) = nil error")
	}
	tests := []string{"", "ACME", "a.b", "a b", strings.Repeat("a", 65)}
	for _, tenant := range tests {
		if _, err := client.New(&nats.Conn{}, tenant); err == nil {
			t.Errorf("New(%q) = nil error, want one", tenant)
		}
	}
}
