package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/events"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/chattermail/chattermail/services/ingest/status"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// apiPost is a post by bob on crm.lead/42 with four followers: ann
// (external), bob himself, carl (internal, email) and dora (internal,
// inbox).
const apiPost = `{"tenant":"acme","thread":{"model":"crm.lead","id":"42","displayName":"Big deal"},
	"author":{"name":"Bob","email":"bob@example.com","internal":true},
	"subject":"Contract signed","bodyText":"The customer signed.",
	"followers":[
		{"partner":{"name":"Ann","email":"ann@example.org"}},
		{"partner":{"name":"Bob","email":"bob@example.com","internal":true}},
		{"partner":{"name":"Carl","email":"carl@example.com","internal":true}},
		{"partner":{"name":"Dora","email":"dora@example.com","internal":true,"partnerId":"9"},"preference":"NOTIFICATION_PREFERENCE_INBOX"}]}`

func decodeJSON[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("answer %q is not the JSON expected: %v", s, err)
	}
	return v
}

// mailTo returns the OutboundMail of post postID to rcpt stored on
// mail.compose.acme, or nil.
func (e *env) mailTo(postID, rcpt string) *cmv1.OutboundMail {
	for _, m := range decode[cmv1.OutboundMail](e.t, e.msgs(bus.StreamCompose, "mail.compose.acme")) {
		if m.GetPostId() == postID && m.GetRecipient().GetEmail() == rcpt {
			return m
		}
	}
	return nil
}

// TestAPI runs every endpoint against the real handlers, with the fan-out
// and the status projector running, and checks every answer against
// openapi.yaml; it ends by checking that every documented answer was
// seen.
func TestAPI(t *testing.T) {
	e := newEnv(t)
	e.run()
	api := newAPIChecker(t, e.http.URL, e.http.Client())
	big := `{"tenant":"acme","subject":"` + strings.Repeat("x", 1<<20) + `"}`

	// Posting, idempotently.
	first := api.expect(call{method: "POST", path: "/v1/posts", key: acmeKey, body: apiPost, header: []string{"Idempotency-Key", "deal-42-signed"}}, 202, `"fanned_out"`)
	p := decodeJSON[ingest.PostStatus](t, first.body)
	wantMails := []string{ingest.MailID("acme", p.PostID, "ann@example.org"), ingest.MailID("acme", p.PostID, "carl@example.com")}
	if !slices.Equal(p.MailIDs, wantMails) || !slices.Equal(p.InboxUsers, []string{"9"}) || len(p.SuppressedMailIDs) != 0 {
		t.Errorf("POST /v1/posts = mail ids %q inbox %q suppressed %q, want %q (ann, carl; not bob, the author) and inbox [9] (dora)",
			p.MailIDs, p.InboxUsers, p.SuppressedMailIDs, wantMails)
	}
	composed := len(e.msgs(bus.StreamCompose, "mail.compose.acme"))
	again := api.expect(call{method: "POST", path: "/v1/posts", key: acmeKey, body: apiPost, header: []string{"Idempotency-Key", "deal-42-signed"}}, 202, "")
	if again.body != first.body {
		t.Errorf("POST /v1/posts again with the same Idempotency-Key = %s, want the first answer %s", again.body, first.body)
	}
	e.waitPostsDone()
	if n := len(e.msgs(bus.StreamCompose, "mail.compose.acme")); n != composed || n != 2 {
		t.Errorf("after a retried post, mail.compose.acme holds %d mails, want the first post's 2", n)
	}
	if n := len(e.msgs(bus.StreamEvents, "events.inbox.acme.>")); n != 1 {
		t.Errorf("after a retried post, %d inbox notifications, want 1", n)
	}
	api.expect(call{method: "POST", path: "/v1/posts", key: acmeKey, body: strings.Replace(apiPost, "Contract signed", "Contract lost", 1),
		header: []string{"Idempotency-Key", "deal-42-signed"}}, 409, "Idempotency-Key")
	// Prefer: respond-async answers once the post is stored; its mail ids
	// come with GET /v1/posts/{post_id}.
	async := api.expect(call{method: "POST", path: "/v1/posts", key: acmeKey, body: strings.Replace(apiPost, "Contract signed", "Agenda", 1),
		header: []string{"Prefer", "respond-async"}}, 202, `"state":"accepted"`)
	if async.header.Get("Preference-Applied") != "respond-async" {
		t.Errorf("POST /v1/posts with Prefer: respond-async: Preference-Applied = %q, want respond-async", async.header.Get("Preference-Applied"))
	}
	asyncID := decodeJSON[ingest.PostStatus](t, async.body).PostID
	testenv.Eventually(t, 10*time.Second, func() error {
		if ans := api.do(call{method: "GET", path: "/v1/posts/" + asyncID, key: acmeKey}); !strings.Contains(ans.body, `"fanned_out"`) {
			return fmt.Errorf("GET /v1/posts/%s = %s, want it fanned out", asyncID, ans.body)
		}
		return nil
	})

	postErrors := []struct {
		name string
		c    call
		want int
	}{
		{"no API key", call{body: apiPost}, 401},
		{"unknown API key", call{key: "guess", body: apiPost}, 401},
		{"another tenant's key", call{key: globexKey, body: apiPost}, 403},
		{"a tenant that does not exist", call{key: acmeKey, body: strings.Replace(apiPost, `"acme"`, `"initech"`, 1)}, 403},
		{"oversized body", call{key: acmeKey, body: big}, 413},
		{"oversized body without length", call{key: acmeKey, raw: chunked{strings.NewReader(big)}}, 413},
		{"malformed JSON", call{key: acmeKey, body: `{"tenant": "acme",`}, 400},
		{"unknown field", call{key: acmeKey, body: strings.Replace(apiPost, `"subject"`, `"subjet"`, 1)}, 400},
		{"invalid address", call{key: acmeKey, body: strings.Replace(apiPost, "ann@example.org", "ann at example", 1)}, 422},
	}
	for _, tt := range postErrors {
		tt.c.method, tt.c.path = "POST", "/v1/posts"
		if ans := api.do(tt.c); ans.status != tt.want || !strings.Contains(ans.body, `"error"`) {
			t.Errorf("POST /v1/posts (%s) = %d %s, want %d with a JSON error", tt.name, ans.status, ans.body, tt.want)
		}
	}

	// Reading a post.
	got := api.expect(call{method: "GET", path: "/v1/posts/" + p.PostID, key: acmeKey}, 200, p.PostID)
	if g := decodeJSON[ingest.PostStatus](t, got.body); !slices.Equal(g.MailIDs, p.MailIDs) || g.State != ingest.StateFannedOut {
		t.Errorf("GET /v1/posts/%s = %s, want the post's answer", p.PostID, got.body)
	}
	api.expect(call{method: "GET", path: "/v1/posts/nothing-here", key: acmeKey}, 404, "no such post")
	api.expect(call{method: "GET", path: "/v1/posts/" + p.PostID, key: globexKey}, 404, "no such post")
	api.expect(call{method: "GET", path: "/v1/posts/" + p.PostID + "?tenant=globex", key: acmeKey}, 403, "globex")
	api.expect(call{method: "GET", path: "/v1/posts/" + p.PostID}, 401, "API key")
	api.expect(call{method: "GET", path: "/v1/posts/" + p.PostID, key: sharedKey}, 400, "several tenants")
	api.expect(call{method: "GET", path: "/v1/posts/" + p.PostID + "?tenant=acme", key: sharedKey}, 200, p.PostID)

	// Threads and followers.
	thread := "/v1/threads/crm.lead/42"
	th := decodeJSON[ingest.ThreadAnswer](t, api.expect(call{method: "GET", path: thread, key: acmeKey}, 200, "").body)
	var followers []string
	for _, f := range th.Followers {
		followers = append(followers, f.Email+"/"+string(f.Preference))
	}
	if want := []string{"ann@example.org/email", "bob@example.com/email", "carl@example.com/email", "dora@example.com/inbox"}; !slices.Equal(followers, want) ||
		th.DisplayName != "Big deal" || th.Revision == 0 {
		t.Errorf("GET %s = followers %q display name %q revision %d, want %q, Big deal and a revision", thread, followers, th.DisplayName, th.Revision, want)
	}
	api.expect(call{method: "GET", path: thread, key: globexKey}, 404, "no such thread")
	api.expect(call{method: "GET", path: thread + "?tenant=globex", key: acmeKey}, 403, "")
	api.expect(call{method: "GET", path: thread, key: "guess"}, 401, "")
	api.expect(call{method: "GET", path: thread, key: sharedKey}, 400, "")
	api.expect(call{method: "GET", path: "/v1/threads/crm.lead/43", key: acmeKey}, 404, "no such thread")

	erin := thread + "/followers/Erin@Example.com"
	f := decodeJSON[threads.Follower](t, api.expect(call{method: "PUT", path: erin, key: acmeKey,
		body: `{"name":"Erin","partner_id":"12","internal":true,"preference":"inbox","subtypes":["note"]}`}, 201, "").body)
	if f.Email != "Erin@Example.com" || f.Preference != threads.PreferenceInbox || !f.Active || !f.Since.Equal(clock) {
		t.Errorf("PUT %s = %+v, want an active inbox follower since %s", erin, f, clock)
	}
	f = decodeJSON[threads.Follower](t, api.expect(call{method: "PUT", path: erin, key: acmeKey, body: `{"name":"Erin","active":false}`}, 200, "").body)
	if f.Preference != threads.PreferenceEmail || f.Active || len(f.Subtypes) != 0 {
		t.Errorf("PUT %s again = %+v, want the follower replaced: email, inactive, every subtype", erin, f)
	}
	followerErrors := []struct {
		name string
		c    call
		want int
	}{
		{"no API key", call{path: erin, body: `{}`}, 401},
		{"a tenant the key may not act for", call{path: erin + "?tenant=globex", key: acmeKey, body: `{}`}, 403},
		{"invalid preference", call{path: erin, key: acmeKey, body: `{"preference":"pigeon"}`}, 422},
		{"invalid address", call{path: thread + "/followers/erin", key: acmeKey, body: `{}`}, 422},
		{"malformed JSON", call{path: erin, key: acmeKey, body: `{"name":`}, 400},
		{"unknown field", call{path: erin, key: acmeKey, body: `{"nickname":"E"}`}, 400},
		{"oversized body", call{path: erin, key: acmeKey, body: `{"name":"` + strings.Repeat("x", 1<<20) + `"}`}, 413},
		{"thread id too long", call{path: "/v1/threads/crm.lead/" + strings.Repeat("9", 300) + "/followers/erin@example.com", key: acmeKey, body: `{}`}, 404},
	}
	for _, tt := range followerErrors {
		tt.c.method = "PUT"
		if ans := api.do(tt.c); ans.status != tt.want {
			t.Errorf("PUT follower (%s) = %d %s, want %d", tt.name, ans.status, ans.body, tt.want)
		}
	}
	// Model and id may hold any character; '/' is escaped in the path.
	api.expect(call{method: "PUT", path: "/v1/threads/" + url.PathEscape("helpdesk.ticket") + "/" + url.PathEscape("7/b Ü") + "/followers/fay@example.com", key: acmeKey, body: `{}`}, 201, "fay@example.com")
	if odd, err := e.svc.Threads().Get(context.Background(), "acme", "helpdesk.ticket", "7/b Ü"); err != nil || len(odd.Followers) != 1 {
		t.Errorf("thread helpdesk.ticket/\"7/b Ü\" = %v, %v, want it with fay", odd, err)
	}
	// Another tenant cannot touch acme's followers: its own thread of
	// the same name is another thread.
	api.expect(call{method: "DELETE", path: erin, key: globexKey}, 404, "")
	api.expect(call{method: "PUT", path: thread + "/followers/gus@globex.test", key: globexKey, body: `{}`}, 201, "")
	api.expect(call{method: "DELETE", path: erin, key: acmeKey}, 204, "")
	api.expect(call{method: "DELETE", path: erin, key: acmeKey}, 404, "no such follower")
	api.expect(call{method: "DELETE", path: "/v1/threads/crm.lead/43/followers/erin@example.com", key: acmeKey}, 404, "no such thread")
	api.expect(call{method: "DELETE", path: erin, key: sharedKey}, 400, "")
	api.expect(call{method: "DELETE", path: erin + "?tenant=globex", key: acmeKey}, 403, "")
	api.expect(call{method: "DELETE", path: erin}, 401, "")
	th = decodeJSON[ingest.ThreadAnswer](t, api.expect(call{method: "GET", path: thread, key: acmeKey}, 200, "").body)
	if len(th.Followers) != 4 || slices.ContainsFunc(th.Followers, func(f threads.Follower) bool { return strings.Contains(f.Email, "gus") }) {
		t.Errorf("acme's thread after globex's changes = %v, want acme's four followers only", th.Followers)
	}

	// The suppression list.
	api.expect(call{method: "GET", path: "/v1/suppressions", key: acmeKey}, 200, `{"suppressions":[]}`)
	added := api.expect(call{method: "POST", path: "/v1/suppressions", key: acmeKey, body: `{"email":"Ann@Example.ORG","reason":"asked by phone"}`}, 201, `"address":"ann@example.org"`)
	api.expect(call{method: "POST", path: "/v1/suppressions", key: acmeKey, body: `{"email":"ann@example.org"}`}, 409, "already suppressed")
	suppressionErrors := []struct {
		name string
		c    call
		want int
	}{
		{"no API key", call{body: `{"email":"x@example.org"}`}, 401},
		{"a tenant the key may not act for", call{path: "?tenant=globex", key: acmeKey, body: `{"email":"x@example.org"}`}, 403},
		{"invalid address", call{key: acmeKey, body: `{"email":"x"}`}, 422},
		{"malformed JSON", call{key: acmeKey, body: `["x@example.org"]`}, 400},
		{"oversized body", call{key: acmeKey, body: `{"email":"x@example.org","reason":"` + strings.Repeat("x", 1<<20) + `"}`}, 413},
	}
	for _, tt := range suppressionErrors {
		tt.c.method, tt.c.path = "POST", "/v1/suppressions"+tt.c.path
		if ans := api.do(tt.c); ans.status != tt.want {
			t.Errorf("POST /v1/suppressions (%s) = %d %s, want %d", tt.name, ans.status, ans.body, tt.want)
		}
	}
	api.expect(call{method: "GET", path: "/v1/suppressions/ANN@example.org", key: acmeKey}, 200, strings.TrimSpace(added.body))
	api.expect(call{method: "GET", path: "/v1/suppressions", key: acmeKey}, 200, "asked by phone")
	api.expect(call{method: "GET", path: "/v1/suppressions", key: globexKey}, 200, `{"suppressions":[]}`)
	api.expect(call{method: "GET", path: "/v1/suppressions/ann@example.org", key: globexKey}, 404, "")
	api.expect(call{method: "DELETE", path: "/v1/suppressions/ann@example.org", key: globexKey}, 404, "")
	for _, c := range []call{{method: "GET", path: "/v1/suppressions"}, {method: "GET", path: "/v1/suppressions/ann@example.org"}, {method: "DELETE", path: "/v1/suppressions/ann@example.org"}} {
		api.expect(c, 401, "")
		c.key = sharedKey
		api.expect(c, 400, "")
		c.key, c.path = acmeKey, c.path+"?tenant=globex"
		api.expect(c, 403, "")
	}

	// A suppressed address is skipped with a suppressed event.
	second := decodeJSON[ingest.PostStatus](t, api.expect(call{method: "POST", path: "/v1/posts", key: acmeKey,
		body: strings.Replace(apiPost, "Contract signed", "Invoice sent", 1)}, 202, "").body)
	annMail := ingest.MailID("acme", second.PostID, "ann@example.org")
	if !slices.Equal(second.SuppressedMailIDs, []string{annMail}) || slices.Contains(second.MailIDs, annMail) || len(second.MailIDs) != 1 {
		t.Errorf("POST /v1/posts with ann suppressed = mails %q suppressed %q, want carl's mail only and ann's suppressed", second.MailIDs, second.SuppressedMailIDs)
	}
	if e.mailTo(second.PostID, "ann@example.org") != nil {
		t.Error("a mail to ann was composed while her address is suppressed")
	}
	api.expect(call{method: "DELETE", path: "/v1/suppressions/ann@example.org", key: acmeKey}, 204, "")
	api.expect(call{method: "DELETE", path: "/v1/suppressions/ann@example.org", key: acmeKey}, 404, "not suppressed")
	api.expect(call{method: "GET", path: "/v1/suppressions/ann@example.org", key: acmeKey}, 404, "not suppressed")

	// Mail status timelines.
	carlMail := p.MailIDs[1]
	testenv.Eventually(t, 10*time.Second, func() error {
		if ans := api.do(call{method: "GET", path: "/v1/mails/" + annMail, key: acmeKey}); !strings.Contains(ans.body, `"state":"suppressed"`) {
			return fmt.Errorf("GET /v1/mails/%s = %d %s, want state suppressed", annMail, ans.status, ans.body)
		}
		return nil
	})
	m := e.mailTo(p.PostID, "carl@example.com")
	for i, ev := range []*cmv1.MailEvent{
		{Outcome: cmv1.Outcome_OUTCOME_REWRITTEN, Stage: "rewrite", From: &cmv1.FromDecision{Header: `"Bob" <notifications@example.com>`,
			SendingAddress: "notifications@example.com", Step: cmv1.FromStep_FROM_STEP_NOTIFICATION, Reason: "every mail is sent as the notification address"}},
		{Outcome: cmv1.Outcome_OUTCOME_DEFERRED, Stage: "sender", Attempt: 1, Reason: "451 try later",
			Smtp: &cmv1.SMTPReply{Code: 451, EnhancedCode: "4.7.1", Text: "try later", Host: "mx.example.com"}, NextAttemptAt: timestamppb.New(clock.Add(5 * time.Minute))},
		{Outcome: cmv1.Outcome_OUTCOME_DELIVERED, Stage: "sender", Attempt: 2, Smtp: &cmv1.SMTPReply{Code: 250, Text: "ok", Host: "mx.example.com"}},
	} {
		full := events.ForMail(m, ev.GetOutcome(), ev.GetStage())
		full.At = timestamppb.New(clock.Add(time.Duration(i+1) * time.Minute))
		full.From, full.Attempt, full.Reason, full.Smtp, full.NextAttemptAt = ev.From, ev.Attempt, ev.Reason, ev.Smtp, ev.NextAttemptAt
		if err := events.PublishMail(context.Background(), e.bus, full); err != nil {
			t.Fatal(err)
		}
	}
	var tl status.Timeline
	testenv.Eventually(t, 10*time.Second, func() error {
		ans := api.do(call{method: "GET", path: "/v1/mails/" + carlMail, key: acmeKey})
		tl = decodeJSON[status.Timeline](t, ans.body)
		// The projector folds events concurrently: wait for all four.
		if tl.State != "delivered" || len(tl.Steps) != 4 {
			return fmt.Errorf("GET /v1/mails/%s = %s, want four steps, the last delivered", carlMail, ans.body)
		}
		return nil
	})
	var steps []string
	for _, s := range tl.Steps {
		steps = append(steps, s.Outcome)
	}
	if want := []string{"composed", "rewritten", "deferred", "delivered"}; !slices.Equal(steps, want) ||
		tl.Steps[1].From.Reason == "" || tl.Steps[2].SMTP.Code != 451 || tl.Steps[2].NextAttemptAt == nil || tl.Steps[3].Attempt != 2 ||
		tl.Recipient != "carl@example.com" || tl.PostID != p.PostID || tl.MessageID != p.MessageID {
		t.Errorf("timeline of %s = %+v, want steps %q with the From reason, the 451 and its next attempt, delivery at attempt 2", carlMail, tl, want)
	}
	api.expect(call{method: "GET", path: "/v1/mails/" + carlMail, key: globexKey}, 404, "no such mail")
	api.expect(call{method: "GET", path: "/v1/mails/" + carlMail + "?tenant=globex", key: acmeKey}, 403, "")
	api.expect(call{method: "GET", path: "/v1/mails/" + carlMail, key: sharedKey}, 400, "")
	api.expect(call{method: "GET", path: "/v1/mails/" + carlMail}, 401, "")
	api.expect(call{method: "GET", path: "/v1/mails/no-such-mail", key: acmeKey}, 404, "no such mail")

	// One-click unsubscribe.
	link := listUnsubscribe(t, m)
	path := strings.TrimPrefix(link, "https://chattermail.example.com")
	api.expect(call{method: "GET", path: path}, 200, "<form method=\"post\">")
	if th, _ := e.svc.Threads().Get(context.Background(), "acme", "crm.lead", "42"); !slices.ContainsFunc(th.Followers, func(f threads.Follower) bool { return f.Email == "carl@example.com" }) {
		t.Error("GET of the unsubscribe link unfollowed carl; only POST may")
	}
	api.expect(call{method: "POST", path: path, body: "List-Unsubscribe=One-Click", header: []string{"Content-Type", "application/x-www-form-urlencoded"}}, 200, "no longer receive")
	api.expect(call{method: "POST", path: path, body: "List-Unsubscribe=One-Click", header: []string{"Content-Type", "application/x-www-form-urlencoded"}}, 200, "no longer receive")
	forged := ingest.UnsubscribeURL("", []byte("another key, 32 bytes or more......"), ingest.Unsubscription{Tenant: "acme", Model: "crm.lead", ThreadID: "42", Address: "ann@example.org"})
	api.expect(call{method: "POST", path: forged}, 404, "not valid")
	api.expect(call{method: "GET", path: "/v1/unsubscribe/garbage"}, 404, "not valid")
	th = decodeJSON[ingest.ThreadAnswer](t, api.expect(call{method: "GET", path: thread, key: acmeKey}, 200, "").body)
	if slices.ContainsFunc(th.Followers, func(f threads.Follower) bool { return f.Email == "carl@example.com" }) ||
		len(th.Unsubscribed) != 1 || th.Unsubscribed[0].Address != "carl@example.com" {
		t.Errorf("thread after carl's one-click unsubscribe = followers %v unsubscribed %v, want carl gone and recorded", th.Followers, th.Unsubscribed)
	}
	// The next post carries carl as follower again: he is not brought back.
	third := decodeJSON[ingest.PostStatus](t, api.expect(call{method: "POST", path: "/v1/posts", key: acmeKey,
		body: strings.Replace(apiPost, "Contract signed", "Kick-off meeting", 1)}, 202, "").body)
	if slices.Contains(third.MailIDs, ingest.MailID("acme", third.PostID, "carl@example.com")) || len(third.MailIDs) != 1 {
		t.Errorf("post after carl unsubscribed = mails %q, want ann's only", third.MailIDs)
	}
	// Following again explicitly lifts the unsubscription.
	api.expect(call{method: "PUT", path: thread + "/followers/carl@example.com", key: acmeKey, body: `{"internal":true}`}, 201, "")

	// Other routes.
	api.expect(call{method: "GET", path: "/v1/openapi.yaml"}, 200, "openapi: 3")
	api.expect(call{method: "GET", path: "/v1/posts", key: acmeKey}, 405, "use POST")
	api.expect(call{method: "PATCH", path: thread, key: acmeKey}, 405, "")
	api.expect(call{method: "GET", path: "/v1/nothing", key: acmeKey}, 404, "no such endpoint")

	api.checkCoverage("* 503")
	e.assertLogsClean("The customer signed", "carl@example.com", "ann@example.org")
}

// listUnsubscribe returns the URL of m's List-Unsubscribe header, after
// checking the RFC 8058 and 2919 fields around it.
func listUnsubscribe(t *testing.T, m *cmv1.OutboundMail) string {
	t.Helper()
	h := map[string]string{}
	for _, f := range m.GetHeaders() {
		h[f.GetName()] = f.GetValue()
	}
	if h["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click" {
		t.Errorf("mail %s List-Unsubscribe-Post = %q, want List-Unsubscribe=One-Click", m.GetMailId(), h["List-Unsubscribe-Post"])
	}
	if want := ingest.ListID(m.GetThread().GetModel(), "example.com"); h["List-Id"] != want {
		t.Errorf("mail %s List-Id = %q, want %q", m.GetMailId(), h["List-Id"], want)
	}
	v := h["List-Unsubscribe"]
	if !strings.HasPrefix(v, "<https://chattermail.example.com/v1/unsubscribe/") || !strings.HasSuffix(v, ">") {
		t.Fatalf("mail %s List-Unsubscribe = %q, want <https://chattermail.example.com/v1/unsubscribe/...>", m.GetMailId(), v)
	}
	return v[1 : len(v)-1]
}
