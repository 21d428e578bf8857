package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var mailIDRE = regexp.MustCompile(`^[a-z0-9-]+$`)

// A post with three followers, one of them the author, sent through the
// HTTP API, becomes exactly two mails on mail.compose.acme and two
// composed events.
func TestFanOutThroughHTTP(t *testing.T) {
	e := newEnv(t)
	e.run()
	body := `{"tenant":"acme","thread":{"model":"crm.lead","id":"42","displayName":"Big deal"},
		"author":{"name":"Bob","email":"bob@example.com","internal":true},
		"subject":"Hello","bodyText":"Hi all, the secret price is 42","bodyHtml":"<p>Hi all</p>",
		"parentMessageId":"<parent-1@example.com>",
		"followers":[
			{"partner":{"name":"Ann","email":"ann@example.org"}},
			{"partner":{"name":"Bob","email":"BOB@Example.com","internal":true}},
			{"partner":{"name":"Carl","email":"carl@example.com","internal":true,"partnerId":"3"}}]}`
	status, _, answer := e.post(acmeKey, strings.NewReader(body))
	if status != http.StatusAccepted {
		t.Fatalf("POST /v1/posts = %d %s, want 202", status, answer)
	}
	var a ingest.PostAnswer
	if err := json.Unmarshal([]byte(answer), &a); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if len(e.msgs(bus.StreamPosts, "")) != 0 {
			return fmt.Errorf("post not yet fanned out")
		}
		return nil
	})

	// Fan-out publishes a post's mails concurrently: order them by
	// recipient.
	raw := e.msgs(bus.StreamCompose, "mail.compose.acme")
	mails := decode[cmv1.OutboundMail](t, raw)
	sortByRecipient(raw, mails, func(m *cmv1.OutboundMail) string { return m.GetRecipient().GetEmail() })
	var got []string
	for _, m := range mails {
		got = append(got, m.GetRecipient().GetEmail())
	}
	if want := []string{"ann@example.org", "carl@example.com"}; !slices.Equal(got, want) {
		t.Fatalf("fan-out of a post by bob with followers ann, BOB, carl = recipients %q, want %q", got, want)
	}
	wantRefs := []string{"parent-1@example.com", a.MessageID}
	for i, m := range mails {
		checks := []struct {
			what      string
			got, want any
		}{
			{"tenant", m.GetTenant(), "acme"},
			{"post_id", m.GetPostId(), a.PostID},
			{"mail_id", m.GetMailId(), ingest.MailID("acme", a.PostID, strings.ToLower(m.GetRecipient().GetEmail()))},
			{"mail_id is a KV key", mailIDRE.MatchString(m.GetMailId()), true},
			{"message_id", m.GetMessageId(), a.MessageID},
			{"message_id", m.GetMessageId(), a.PostID + "@example.com"},
			{"in_reply_to", m.GetInReplyTo(), "parent-1@example.com"},
			{"references", strings.Join(m.GetReferences(), " "), strings.Join(wantRefs, " ")},
			{"subject", m.GetSubject(), "Hello"},
			{"body_text", m.GetBodyText(), "Hi all, the secret price is 42"},
			{"body_html", m.GetBodyHtml(), "<p>Hi all</p>"},
			{"subtype", m.GetSubtype(), ingest.SubtypeComment},
			{"thread", m.GetThread().GetModel() + "/" + m.GetThread().GetId(), "crm.lead/42"},
			{"author", m.GetAuthor().GetEmail(), "bob@example.com"},
			{"created_at", m.GetCreatedAt().AsTime(), clock},
			{"Nats-Msg-Id", raw[i].Header.Get(nats.MsgIdHdr), bus.MsgID(m.GetMailId(), "compose")},
			{"correlation id carried", raw[i].Header.Get(bus.HeaderCorrelation) != "", true},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("mail to %s: %s = %v, want %v", m.GetRecipient().GetEmail(), c.what, c.got, c.want)
			}
		}
	}
	if mails[0].GetMailId() == mails[1].GetMailId() {
		t.Errorf("both mails have mail_id %q, want one per recipient", mails[0].GetMailId())
	}

	rawEvs := e.msgs(bus.StreamEvents, "events.mail.acme.composed")
	evs := decode[cmv1.MailEvent](t, rawEvs)
	sortByRecipient(rawEvs, evs, func(ev *cmv1.MailEvent) string { return ev.GetRecipient() })
	if len(evs) != 2 {
		t.Fatalf("events.mail.acme.composed holds %d events, want 2", len(evs))
	}
	for i, ev := range evs {
		m := mails[i]
		if ev.GetMailId() != m.GetMailId() || ev.GetOutcome() != cmv1.Outcome_OUTCOME_COMPOSED || ev.GetStage() != ingest.Stage ||
			ev.GetRecipient() != m.GetRecipient().GetEmail() || ev.GetMessageId() != a.MessageID || !ev.GetAt().AsTime().Equal(clock) {
			t.Errorf("composed event %d = %v, want mail %s to %s by stage ingest at %s", i, ev, m.GetMailId(), m.GetRecipient().GetEmail(), clock)
		}
	}
	if !strings.Contains(e.logs.String(), `"post_id":"`+a.PostID+`"`) {
		t.Errorf("no log line names post %s:\n%s", a.PostID, e.logs.String())
	}
	e.assertLogsClean("secret price", "<p>Hi all</p>")
}

// sortByRecipient sorts msgs and their raw messages by recipient.
func sortByRecipient[M any](raw []*jetstream.RawStreamMsg, msgs []M, rcpt func(M) string) {
	idx := make([]int, len(msgs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return strings.Compare(rcpt(msgs[a]), rcpt(msgs[b])) })
	r2, m2 := slices.Clone(raw), slices.Clone(msgs)
	for i, j := range idx {
		raw[i], msgs[i] = r2[j], m2[j]
	}
}

// postBy returns a post from bob on crm.lead/42 with the given followers.
func postBy(id string, followers ...*cmv1.Follower) *cmv1.ChatterPost {
	return &cmv1.ChatterPost{
		Tenant:    "acme",
		PostId:    id,
		Thread:    &cmv1.ThreadRef{Model: "crm.lead", Id: "42"},
		Author:    &cmv1.Partner{Name: "Bob", Email: "bob@example.com", PartnerId: "1", Internal: true},
		Subject:   "Status",
		BodyText:  "Moving on",
		Followers: followers,
		Source:    cmv1.PostSource_POST_SOURCE_BUS,
	}
}

func follower(email string, internal bool, pref cmv1.NotificationPreference, partnerID string) *cmv1.Follower {
	return &cmv1.Follower{Partner: &cmv1.Partner{Email: email, Internal: internal, PartnerId: partnerID}, Preference: pref}
}

const (
	email = cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_UNSPECIFIED
	inbox = cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX
)

func TestFanOutFromBus(t *testing.T) {
	note := postBy("note-1",
		follower("carl@example.com", true, email, "3"),
		follower("ann@example.org", false, email, ""))
	note.Subtype = ingest.SubtypeNote
	note.Recipients = []*cmv1.Partner{{Email: "dan@example.net"}, {Email: "erin@example.com", Internal: true}}

	tests := []struct {
		name      string
		post      *cmv1.ChatterPost
		wantMail  []string
		wantInbox []string // subjects
	}{
		{
			name:     "a note skips external partners",
			post:     note,
			wantMail: []string{"carl@example.com", "erin@example.com"},
		},
		{
			name: "an internal inbox follower gets a notification, not an email",
			post: postBy("inbox-1",
				follower("carl@example.com", true, inbox, "3"),
				follower("ann@example.org", false, inbox, ""),
				follower("fay@example.com", true, inbox, "")),
			wantMail: []string{"ann@example.org"},
			wantInbox: []string{"events.inbox.acme.3",
				"events.inbox.acme." + ingest.InboxUser(&cmv1.Partner{Email: "fay@example.com"})},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.run()
			e.publishPost("chatter.post.acme", marshal(t, tt.post))
			e.waitPostsDone()

			var gotMail []string
			for _, m := range decode[cmv1.OutboundMail](t, e.msgs(bus.StreamCompose, "mail.compose.acme")) {
				gotMail = append(gotMail, m.GetRecipient().GetEmail())
				if m.GetSubtype() != tt.post.GetSubtype() && tt.post.GetSubtype() != "" {
					t.Errorf("mail to %s subtype = %q, want %q", m.GetRecipient().GetEmail(), m.GetSubtype(), tt.post.GetSubtype())
				}
			}
			raw := e.msgs(bus.StreamEvents, "events.inbox.acme.>")
			var gotInbox []string
			for i, n := range decode[cmv1.InboxNotification](t, raw) {
				gotInbox = append(gotInbox, raw[i].Subject)
				if n.GetPostId() != tt.post.GetPostId() || n.GetTenant() != "acme" || n.GetSubject() != "Status" ||
					n.GetBodyText() != "Moving on" || n.GetAuthor().GetEmail() != "bob@example.com" || !n.GetAt().AsTime().Equal(clock) {
					t.Errorf("inbox notification on %s = %v, want post %s by bob at %s", raw[i].Subject, n, tt.post.GetPostId(), clock)
				}
				if !strings.HasSuffix(raw[i].Subject, "."+n.GetUser()) {
					t.Errorf("inbox notification on %s has user %q, want the subject's last token", raw[i].Subject, n.GetUser())
				}
			}
			slices.Sort(gotMail)
			slices.Sort(gotInbox)
			if !slices.Equal(gotMail, tt.wantMail) || !slices.Equal(gotInbox, tt.wantInbox) {
				t.Errorf("fan-out(%s) = mail %q inbox %q, want mail %q inbox %q", tt.name, gotMail, gotInbox, tt.wantMail, tt.wantInbox)
			}
			if n := len(e.msgs(bus.StreamEvents, "events.mail.acme.composed")); n != len(tt.wantMail) {
				t.Errorf("fan-out(%s) published %d composed events, want %d", tt.name, n, len(tt.wantMail))
			}
		})
	}
}

// Publishing the same post twice, or handling one delivery twice, creates
// each mail once: every output has a Nats-Msg-Id derived from the post.
func TestFanOutIsIdempotent(t *testing.T) {
	followers := []*cmv1.Follower{
		follower("ann@example.org", false, email, ""),
		follower("carl@example.com", true, email, "3"),
		follower("gus@example.com", true, inbox, "7"),
	}
	withID := postBy("p-1", followers...)
	withKey := postBy("", followers...)
	withKey.IdempotencyKey = "order-7"
	tests := []struct {
		name string
		post *cmv1.ChatterPost
	}{
		{"post id", withID},
		{"idempotency key", withKey},
	}
	for _, tt := range tests {
		t.Run("published twice with "+tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.run()
			data := marshal(t, tt.post)
			e.publishPost("chatter.post.acme", data)
			e.publishPost("chatter.post.acme", data)
			e.waitPostsDone()
			assertOutputs(t, e, tt.name, 2, 1)
		})
	}

	// A redelivery carries the same stream sequence: a post without id or
	// key gets the same derived id each time.
	t.Run("redelivered without id or key", func(t *testing.T) {
		e := newEnv(t)
		d := &bus.Delivery{Subject: "chatter.post.acme", Tenant: "acme", Data: marshal(t, postBy("", followers...)), StreamSeq: 12, Attempt: 1}
		for attempt := 1; attempt <= 3; attempt++ {
			d.Attempt = attempt
			if err := e.svc.HandleDelivery(context.Background(), d); err != nil {
				t.Fatalf("HandleDelivery(attempt %d) = %v, want nil", attempt, err)
			}
		}
		assertOutputs(t, e, "redelivery", 2, 1)
		// Another stream sequence is another post.
		d.StreamSeq = 13
		if err := e.svc.HandleDelivery(context.Background(), d); err != nil {
			t.Fatal(err)
		}
		assertOutputs(t, e, "another post", 4, 2)
	})
}

func assertOutputs(t *testing.T, e *env, what string, wantMails, wantInbox int) {
	t.Helper()
	mails := decode[cmv1.OutboundMail](t, e.msgs(bus.StreamCompose, "mail.compose.acme"))
	ids := map[string]bool{}
	for _, m := range mails {
		ids[m.GetMailId()] = true
	}
	if len(mails) != wantMails || len(ids) != wantMails {
		t.Errorf("%s: mail.compose.acme holds %d mails with %d ids, want %d", what, len(mails), len(ids), wantMails)
	}
	if n := len(e.msgs(bus.StreamEvents, "events.mail.acme.composed")); n != wantMails {
		t.Errorf("%s: %d composed events, want %d", what, n, wantMails)
	}
	if n := len(e.msgs(bus.StreamEvents, "events.inbox.acme.>")); n != wantInbox {
		t.Errorf("%s: %d inbox notifications, want %d", what, n, wantInbox)
	}
}

// Bad posts on the bus are dead-lettered with a reason; the service goes
// on with the next post.
func TestBadPostsAreDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.run()
	noAuthor := postBy("p-bad")
	noAuthor.Author = nil
	wrongTenant := postBy("p-globex")
	wrongTenant.Tenant = "globex"
	unknown := postBy("p-initech")
	unknown.Tenant = "initech"

	tests := []struct {
		name       string
		subject    string
		data       []byte
		wantDLQ    string
		wantReason string
	}{
		{"malformed protobuf", "chatter.post.acme", []byte("\xff\xff\xff not a protobuf"), "dlq.ingest.acme", "undecodable"},
		{"invalid post", "chatter.post.acme", marshal(t, noAuthor), "dlq.ingest.acme", "author is required"},
		{"tenant differs from subject", "chatter.post.acme", marshal(t, wrongTenant), "dlq.ingest.acme", `tenant "globex"`},
		{"unknown tenant", "chatter.post.initech", marshal(t, unknown), "dlq.ingest.initech", `unknown tenant "initech"`},
	}
	for _, tt := range tests {
		before := len(e.msgs(bus.StreamDLQ, tt.wantDLQ))
		e.publishPost(tt.subject, tt.data)
		testenv.Eventually(t, 10*time.Second, func() error {
			if len(e.msgs(bus.StreamDLQ, tt.wantDLQ)) == before {
				return fmt.Errorf("no dead letter for %s on %s", tt.name, tt.wantDLQ)
			}
			return nil
		})
		dl := e.msgs(bus.StreamDLQ, tt.wantDLQ)
		m := dl[len(dl)-1]
		if r := m.Header.Get(bus.HeaderDLQReason); !strings.Contains(r, tt.wantReason) {
			t.Errorf("dead letter of %s: reason = %q, want it to contain %q", tt.name, r, tt.wantReason)
		}
		if s := m.Header.Get(bus.HeaderDLQSubject); s != tt.subject || string(m.Data) != string(tt.data) {
			t.Errorf("dead letter of %s: subject %q payload %q, want the original %s and payload", tt.name, s, m.Data, tt.subject)
		}
	}
	if n := len(e.msgs(bus.StreamDLQ, "")); n != len(tests) {
		t.Errorf("DLQ holds %d messages, want %d", n, len(tests))
	}

	// The service keeps working.
	e.publishPost("chatter.post.acme", marshal(t, postBy("p-good", follower("ann@example.org", false, email, ""))))
	e.waitPostsDone()
	mails := decode[cmv1.OutboundMail](t, e.msgs(bus.StreamCompose, "mail.compose.acme"))
	if len(mails) != 1 || mails[0].GetPostId() != "p-good" {
		t.Errorf("after the dead letters, mail.compose.acme holds %v, want the one mail of p-good", mails)
	}
}
