package ingest_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// crowd is a post by f0000 on crm.lead/1000 followed by 1,000 partners
// f0000..f0999 with mixed preferences, and what its fan-out must give.
type crowd struct {
	post *cmv1.ChatterPost
	// suppressed are the addresses on the suppression list.
	suppressed []string
	// emails, inbox and skipped are the expected outcomes: addresses that
	// get an email, inbox user tokens, addresses skipped as suppressed.
	emails, inbox, skipped []string
}

// newCrowd builds the post. Follower i is, by i % 10: 0-2 an internal
// user preferring inbox, 3 an external partner preferring inbox (who
// gets email: external partners always do), 4 inactive, 5-9 email. Every
// 25th address from 7 on is suppressed. f0000 is the author.
func newCrowd(postID string) *crowd {
	c := &crowd{post: &cmv1.ChatterPost{
		Tenant: "acme", PostId: postID, Thread: &cmv1.ThreadRef{Model: "crm.lead", Id: "1000", DisplayName: "Crowded"},
		Author:  &cmv1.Partner{Name: "F0", Email: "f0000@example.org", PartnerId: "u0", Internal: true},
		Subject: "All hands", BodyText: "Hello everyone", Source: cmv1.PostSource_POST_SOURCE_BUS,
	}}
	for i := range 1000 {
		addr := fmt.Sprintf("f%04d@example.org", i)
		f := &cmv1.Follower{Partner: &cmv1.Partner{Email: addr}}
		switch i % 10 {
		case 0, 1, 2:
			f.Partner.Internal, f.Partner.PartnerId = true, "u"+strconv.Itoa(i)
			f.Preference = cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX
		case 3:
			f.Preference = cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX
		case 4:
			f.Inactive = true
		}
		c.post.Followers = append(c.post.Followers, f)
		suppressed := i%25 == 7
		if suppressed {
			c.suppressed = append(c.suppressed, addr)
		}
		switch {
		case i == 0 || f.Inactive:
		case f.Partner.Internal && f.Preference == cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX:
			c.inbox = append(c.inbox, f.Partner.PartnerId)
		case suppressed:
			c.skipped = append(c.skipped, addr)
		default:
			c.emails = append(c.emails, addr)
		}
	}
	return c
}

func (c *crowd) suppress(t testing.TB, e *env) {
	t.Helper()
	for _, a := range c.suppressed {
		if _, _, err := e.svc.Suppression().Suppress(context.Background(), "acme", a, "5.1.1 user unknown", "bounce"); err != nil {
			t.Fatal(err)
		}
	}
}

// One post to 1,000 followers with mixed preferences, through the POSTS
// consumer: one email per email recipient, one inbox notification per
// internal inbox follower, a suppressed event per suppressed address,
// nothing for the author and the inactive.
func TestFanOutToAThousandFollowers(t *testing.T) {
	e := newEnv(t)
	c := newCrowd("crowd-1")
	c.suppress(t, e)
	e.run()
	e.publishPost("chatter.post.acme", marshal(t, c.post))
	e.waitPostsDone()

	var gotEmails []string
	ids := map[string]bool{}
	for _, m := range decode[cmv1.OutboundMail](t, e.msgs(bus.StreamCompose, "mail.compose.acme")) {
		gotEmails = append(gotEmails, m.GetRecipient().GetEmail())
		ids[m.GetMailId()] = true
	}
	slices.Sort(gotEmails)
	var gotInbox []string
	for _, n := range decode[cmv1.InboxNotification](t, e.msgs(bus.StreamEvents, "events.inbox.acme.>")) {
		gotInbox = append(gotInbox, n.GetUser())
	}
	slices.Sort(gotInbox)
	var gotSkipped []string
	for _, ev := range decode[cmv1.MailEvent](t, e.msgs(bus.StreamEvents, "events.mail.acme.suppressed")) {
		gotSkipped = append(gotSkipped, ev.GetRecipient())
	}
	slices.Sort(gotSkipped)
	slices.Sort(c.inbox)
	composed := len(e.msgs(bus.StreamEvents, "events.mail.acme.composed"))

	t.Logf("1,000 followers: %d emails, %d inbox notifications, %d suppressed, author and %d inactive left out",
		len(gotEmails), len(gotInbox), len(gotSkipped), 100)
	if !slices.Equal(gotEmails, c.emails) || len(ids) != len(c.emails) || composed != len(c.emails) {
		t.Errorf("fan-out to 1,000 followers = %d emails (%d ids, %d composed events), want %d", len(gotEmails), len(ids), composed, len(c.emails))
	}
	if !slices.Equal(gotInbox, c.inbox) {
		t.Errorf("fan-out to 1,000 followers = %d inbox notifications, want %d", len(gotInbox), len(c.inbox))
	}
	if !slices.Equal(gotSkipped, c.skipped) {
		t.Errorf("fan-out to 1,000 followers = %d suppressed events, want %d", len(gotSkipped), len(c.skipped))
	}
	if slices.Contains(gotEmails, "f0000@example.org") || slices.Contains(gotInbox, "u0") {
		t.Error("the author was notified")
	}
	// The thread keeps every follower, the inactive too.
	th, err := e.svc.Threads().Get(context.Background(), "acme", "crm.lead", "1000")
	if err != nil || len(th.Followers) != 1000 {
		t.Errorf("thread crm.lead/1000 = %d followers (%v), want 1000", len(th.Followers), err)
	}
}

// BenchmarkFanOut1000 fans one post out to 1,000 followers (the crowd
// above: 580 emails, 299 inbox notifications, 20 suppressed) per
// iteration, on an in-process NATS server, and reports the median time
// of one fan-out.
func BenchmarkFanOut1000(b *testing.B) {
	e := newEnv(b)
	c := newCrowd("warm-up")
	c.suppress(b, e)
	ctx := context.Background()
	fanOut := func(id string) time.Duration {
		c.post.PostId = id
		d := &bus.Delivery{Subject: "chatter.post.acme", Tenant: "acme", Data: marshal(b, c.post), StreamSeq: 1, Attempt: 1}
		start := time.Now()
		if err := e.svc.HandleDelivery(ctx, d); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	fanOut("warm-up") // stores the thread's 1,000 followers
	var times []time.Duration
	n := 0
	for b.Loop() {
		n++
		times = append(times, fanOut("bench-"+strconv.Itoa(n)))
	}
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "ms/fanout-median")
	b.ReportMetric(float64(len(c.emails)), "emails/fanout")
}
