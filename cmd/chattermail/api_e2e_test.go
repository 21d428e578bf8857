package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/chattermail/chattermail/services/ingest/client"
	"github.com/chattermail/chattermail/services/ingest/status"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
)

// The API tests run the whole pipeline in this process (in-process NATS,
// a real redis-server, an SMTP capture) with two tenants, acme and
// globex, and drive it through the HTTP API, NATS and the Go client.

const globexAPIKey = "test-globex-key"

// apiSystem is a running pipeline and its HTTP API.
type apiSystem struct {
	*deps
	base string
}

// apiOptions change startAPISystem's defaults.
type apiOptions struct {
	// limit is acme's daily limit; default 200.
	limit int
	// now is every stage's clock; default time.Now.
	now func() time.Time
}

// startAPISystem starts the dependencies with tenants acme (example.com)
// and globex (globex.test), both delivering to the capture, and the
// pipeline with a 200ms first SMTP retry and the unsubscribe links
// pointing at its own HTTP API.
func startAPISystem(t *testing.T, change ...func(*apiOptions)) *apiSystem {
	t.Helper()
	o := apiOptions{limit: 200, now: time.Now}
	for _, c := range change {
		c(&o)
	}
	// No DMARC records in d's DNS: authors' domains publish no policy.
	d := startDepsConfig(t, func(host string, port int) string {
		var cfg strings.Builder
		cfg.WriteString("tenants:\n")
		for _, tn := range []struct {
			id, domain, key string
			limit           int
		}{{"acme", "example.com", testAPIKey, o.limit}, {"globex", "globex.test", globexAPIKey, 200}} {
			fmt.Fprintf(&cfg, "  %s:\n    alias_domain: %s\n    daily_limit: %d\n    api_keys: [%q]\n    servers:\n      - {name: capture, host: %s, port: %d, tls: none}\n",
				tn.id, tn.domain, tn.limit, config.APIKeyDigest(tn.key), host, port)
		}
		return cfg.String()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	startPipeline(t, d, pipelineOptions{SenderRetryBase: 200 * time.Millisecond, Now: o.now,
		PublicURL: "http://" + ln.Addr().String(), UnsubscribeKey: []byte("api e2e test unsubscribe key, 32 bytes or more")}, ln)
	return &apiSystem{deps: d, base: "http://" + ln.Addr().String()}
}

// call sends one request to the API with key as bearer token (none when
// empty) and returns the status and body.
func (s *apiSystem) call(t *testing.T, method, path, key, body string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// expect calls the API and fails the test unless it answers want.
func (s *apiSystem) expect(t *testing.T, want int, method, path, key, body string, header ...string) string {
	t.Helper()
	got, ans := s.call(t, method, path, key, body, header...)
	if got != want {
		t.Errorf("%s %s = %d %s, want %d", method, path, got, strings.TrimSpace(ans), want)
	}
	return ans
}

func fromJSON[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("answer %q: %v", s, err)
	}
	return v
}

// waitMails waits until the capture holds n mails and the pipeline is
// drained, so that no further copy is on its way.
func (s *apiSystem) waitMails(t *testing.T, n int) []*smtpcapture.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := s.capture.Wait(ctx, n); err != nil {
		t.Fatal(err)
	}
	waitDrained(t, s.js)
	msgs := s.capture.Messages()
	if len(msgs) != n {
		t.Fatalf("captured %d mails, want exactly %d", len(msgs), n)
	}
	return msgs
}

// timeline waits until mail's timeline has the steps want (its state
// being the last) and returns it. The projector folds events
// concurrently, so the state alone may come before an earlier step.
func (s *apiSystem) timeline(t *testing.T, mailID string, want ...string) status.Timeline {
	t.Helper()
	var tl status.Timeline
	testenv.Eventually(t, 30*time.Second, func() error {
		code, body := s.call(t, "GET", "/v1/mails/"+mailID, testAPIKey, "")
		if code == http.StatusOK {
			tl = fromJSON[status.Timeline](t, body)
		}
		if code != http.StatusOK || !slices.Equal(outcomesOf(tl), want) || tl.State != want[len(want)-1] {
			return fmt.Errorf("GET /v1/mails/%s = %d %s, want steps %q", mailID, code, body, want)
		}
		return nil
	})
	return tl
}

func outcomesOf(tl status.Timeline) []string {
	var out []string
	for _, s := range tl.Steps {
		out = append(out, s.Outcome)
	}
	return out
}

// Every endpoint through the whole system: authentication, tenants kept
// apart, idempotent posts that send nothing twice, bad bodies, followers,
// the suppression list, mail status, and one-click unsubscribe.
func TestAPIEndToEnd(t *testing.T) {
	s := startAPISystem(t)

	// Posting, idempotently: two emails (ann, carl; bob is the author).
	body := s.expect(t, 202, "POST", "/v1/posts", testAPIKey, samplePost, "Idempotency-Key", "deal-42-signed")
	p := fromJSON[ingest.PostStatus](t, body)
	if p.State != ingest.StateFannedOut || len(p.MailIDs) != 2 {
		t.Fatalf("POST /v1/posts = %s, want fanned out to 2 mails", body)
	}
	checkSampleDelivery(t, s.deps, postAnswer{PostID: p.PostID, MessageID: p.MessageID})
	if again := s.expect(t, 202, "POST", "/v1/posts", testAPIKey, samplePost, "Idempotency-Key", "deal-42-signed"); again != body {
		t.Errorf("POST /v1/posts again with the same Idempotency-Key = %s, want %s", again, body)
	}
	s.expect(t, 409, "POST", "/v1/posts", testAPIKey, strings.Replace(samplePost, "Contract signed", "Contract lost", 1), "Idempotency-Key", "deal-42-signed")
	waitDrained(t, s.js)
	if n := len(s.capture.Messages()); n != 2 {
		t.Errorf("captured %d mails after a retried post, want still 2", n)
	}

	// Authentication, tenants and bad bodies, on every endpoint.
	carlMail := ingest.MailID("acme", p.PostID, "carl@example.com")
	thread := "/v1/threads/crm.lead/42"
	endpoints := []struct{ method, path, body string }{
		{"POST", "/v1/posts", samplePost},
		{"GET", "/v1/posts/" + p.PostID, ""},
		{"GET", thread, ""},
		{"PUT", thread + "/followers/dan@example.com", `{}`},
		{"DELETE", thread + "/followers/carl@example.com", ""},
		{"GET", "/v1/mails/" + carlMail, ""},
		{"GET", "/v1/suppressions", ""},
		{"POST", "/v1/suppressions", `{"email":"dan@example.com"}`},
		{"GET", "/v1/suppressions/dan@example.com", ""},
		{"DELETE", "/v1/suppressions/dan@example.com", ""},
	}
	for _, ep := range endpoints {
		s.expect(t, 401, ep.method, ep.path, "", ep.body)
		s.expect(t, 401, ep.method, ep.path, "not-a-key", ep.body)
		sep := "?"
		if strings.Contains(ep.path, "?") {
			sep = "&"
		}
		if ep.path != "/v1/posts" {
			s.expect(t, 403, ep.method, ep.path+sep+"tenant=acme", globexAPIKey, ep.body)
		}
	}
	s.expect(t, 403, "POST", "/v1/posts", globexAPIKey, samplePost)
	// globex sees none of acme's data, and changes none of it.
	s.expect(t, 404, "GET", "/v1/posts/"+p.PostID, globexAPIKey, "")
	s.expect(t, 404, "GET", thread, globexAPIKey, "")
	s.expect(t, 404, "DELETE", thread+"/followers/carl@example.com", globexAPIKey, "")
	s.expect(t, 404, "GET", "/v1/mails/"+carlMail, globexAPIKey, "")
	s.expect(t, 201, "POST", "/v1/suppressions", globexAPIKey, `{"email":"carl@example.com"}`)
	s.expect(t, 200, "GET", "/v1/suppressions", testAPIKey, "", "")
	if _, list := s.call(t, "GET", "/v1/suppressions", testAPIKey, ""); list != `{"suppressions":[]}`+"\n" {
		t.Errorf("acme's suppression list = %s, want empty: globex's entry is globex's", list)
	}
	s.expect(t, 400, "POST", "/v1/posts", testAPIKey, `{"tenant": "acme",`)
	s.expect(t, 413, "POST", "/v1/posts", testAPIKey, `{"tenant":"acme","subject":"`+strings.Repeat("x", 1<<20)+`"}`)
	s.expect(t, 422, "POST", "/v1/posts", testAPIKey, strings.Replace(samplePost, "ann@customer.example", "ann at customer", 1))
	s.expect(t, 400, "PUT", thread+"/followers/dan@example.com", testAPIKey, `{"name":`)
	s.expect(t, 422, "PUT", thread+"/followers/dan@example.com", testAPIKey, `{"preference":"pigeon"}`)
	s.expect(t, 413, "POST", "/v1/suppressions", testAPIKey, `{"email":"dan@example.com","reason":"`+strings.Repeat("x", 1<<20)+`"}`)
	s.expect(t, 400, "POST", "/v1/suppressions", testAPIKey, `not json`)
	s.expect(t, 422, "POST", "/v1/suppressions", testAPIKey, `{"email":"dan"}`)

	// Reading what the post did.
	if got := fromJSON[ingest.PostStatus](t, s.expect(t, 200, "GET", "/v1/posts/"+p.PostID, testAPIKey, "")); !slices.Equal(got.MailIDs, p.MailIDs) {
		t.Errorf("GET /v1/posts/%s = mail ids %q, want %q", p.PostID, got.MailIDs, p.MailIDs)
	}
	tl := s.timeline(t, carlMail, "composed", "rewritten", "delivered")
	if tl.Steps[1].From == nil ||
		tl.Steps[1].From.Reason == "" || tl.Steps[2].SMTP == nil || tl.Steps[2].SMTP.Code != 250 {
		t.Errorf("timeline of carl's mail = %+v, want composed, rewritten with its reason, delivered with the 250", tl)
	}
	s.expect(t, 404, "GET", "/v1/mails/"+carlMail+"x", testAPIKey, "")
	s.expect(t, 404, "GET", "/v1/posts/no-such-post", testAPIKey, "")

	// Followers.
	th := fromJSON[ingest.ThreadAnswer](t, s.expect(t, 200, "GET", thread, testAPIKey, ""))
	if len(th.Followers) != 3 || th.DisplayName != "Big deal" {
		t.Errorf("GET %s = %+v, want the post's three followers", thread, th.Thread)
	}
	s.expect(t, 201, "PUT", thread+"/followers/dan@example.com", testAPIKey, `{"name":"Dan","internal":true,"preference":"inbox","partner_id":"4"}`)
	s.expect(t, 200, "PUT", thread+"/followers/dan@example.com", testAPIKey, `{"name":"Dan","internal":true,"preference":"inbox","partner_id":"4","subtypes":["comment"]}`)
	s.expect(t, 204, "DELETE", thread+"/followers/dan@example.com", testAPIKey, "")
	s.expect(t, 404, "DELETE", thread+"/followers/dan@example.com", testAPIKey, "")
	s.expect(t, 404, "GET", "/v1/threads/crm.lead/43", testAPIKey, "")

	// The suppression list: carl is skipped with a suppressed event.
	s.expect(t, 201, "POST", "/v1/suppressions", testAPIKey, `{"email":"Carl@Example.com","reason":"5.1.1 user unknown"}`)
	s.expect(t, 409, "POST", "/v1/suppressions", testAPIKey, `{"email":"carl@example.com"}`)
	s.expect(t, 200, "GET", "/v1/suppressions/carl@example.com", testAPIKey, "")
	if _, list := s.call(t, "GET", "/v1/suppressions", testAPIKey, ""); !strings.Contains(list, "5.1.1 user unknown") {
		t.Errorf("GET /v1/suppressions = %s, want carl's entry", list)
	}
	second := fromJSON[ingest.PostStatus](t, s.expect(t, 202, "POST", "/v1/posts", testAPIKey, strings.Replace(samplePost, "Contract signed", "Invoice sent", 1)))
	msgs := s.waitMails(t, 3)
	if to := msgs[2].To; len(to) != 1 || to[0] != "ann@customer.example" || len(second.SuppressedMailIDs) != 1 {
		t.Errorf("post with carl suppressed reached %v (suppressed %q), want ann only", to, second.SuppressedMailIDs)
	}
	s.timeline(t, second.SuppressedMailIDs[0], "suppressed")
	s.expect(t, 204, "DELETE", "/v1/suppressions/carl@example.com", testAPIKey, "")
	s.expect(t, 404, "DELETE", "/v1/suppressions/carl@example.com", testAPIKey, "")
	s.expect(t, 404, "GET", "/v1/suppressions/carl@example.com", testAPIKey, "")

	// One-click unsubscribe from the link in ann's mail.
	h, err := msgs[2].Header()
	if err != nil {
		t.Fatal(err)
	}
	if h.Get("List-Unsubscribe-Post") != "List-Unsubscribe=One-Click" || h.Get("List-Id") != `"crm.lead" <crm.lead.example.com>` {
		t.Errorf("mail to ann: List-Unsubscribe-Post %q, List-Id %q, want List-Unsubscribe=One-Click and the thread's model",
			h.Get("List-Unsubscribe-Post"), h.Get("List-Id"))
	}
	link := strings.Trim(h.Get("List-Unsubscribe"), "<>")
	if !strings.HasPrefix(link, s.base+"/v1/unsubscribe/") {
		t.Fatalf("mail to ann: List-Unsubscribe = %q, want <%s/v1/unsubscribe/...>", h.Get("List-Unsubscribe"), s.base)
	}
	resp, err := http.Post(link, "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("POST %s = %d, want 200", link, resp.StatusCode)
	}
	th = fromJSON[ingest.ThreadAnswer](t, s.expect(t, 200, "GET", thread, testAPIKey, ""))
	if slices.ContainsFunc(th.Followers, func(f threads.Follower) bool { return f.Email == "ann@customer.example" }) {
		t.Errorf("after ann's one-click unsubscribe the thread still has her: %v", th.Followers)
	}
	// The next post carries ann as follower again, and does not reach her.
	s.expect(t, 202, "POST", "/v1/posts", testAPIKey, strings.Replace(samplePost, "Contract signed", "Kick-off", 1))
	msgs = s.waitMails(t, 4)
	if to := msgs[3].To; len(to) != 1 || to[0] != "carl@example.com" {
		t.Errorf("post after ann unsubscribed reached %v, want carl only", to)
	}
}

// shiftedClock runs at the speed of real time from a chosen start, and
// jumps forward on Advance.
type shiftedClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func newShiftedClock(start time.Time) *shiftedClock { return &shiftedClock{offset: time.Until(start)} }

func (c *shiftedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *shiftedClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// One mail's timeline, read through GET /v1/mails/{id}: composed,
// rewritten, held by quota until the next window (the daily limit of 1
// is spent), released when the clock reaches it, deferred by a 451 from
// the receiving server, retried and delivered.
func TestAPIStatusTimelineThroughRetry(t *testing.T) {
	clock := newShiftedClock(time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC))
	s := startAPISystem(t, func(o *apiOptions) { o.limit, o.now = 1, clock.Now })
	post := func(subject, to string) ingest.PostStatus {
		body := fmt.Sprintf(`{"tenant":"acme","thread":{"model":"crm.lead","id":"7"},"author":{"email":"bob@example.com"},
			"subject":%q,"bodyText":"x","recipients":[{"email":%q}]}`, subject, to)
		p := fromJSON[ingest.PostStatus](t, s.expect(t, 202, "POST", "/v1/posts", testAPIKey, body))
		if len(p.MailIDs) != 1 {
			t.Fatalf("POST /v1/posts = %+v, want one mail", p)
		}
		return p
	}
	post("Uses the day's only mail", "zed@customer.example")
	s.waitMails(t, 1)

	refused := make(chan struct{}, 1)
	s.capture.SetReject(func(_, rcpt string) error {
		select {
		case refused <- struct{}{}:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
		default:
			return nil
		}
	})
	mail := post("Retry me", "ann@customer.example").MailIDs[0]
	held := s.timeline(t, mail, "composed", "rewritten", "held")
	nextDay := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	if st := held.Steps[len(held.Steps)-1]; st.ReleaseAt == nil || !st.ReleaseAt.Equal(nextDay) {
		t.Errorf("held step = %+v, want release at %s", st, nextDay)
	}
	clock.Advance(nextDay.Sub(clock.Now()) + time.Second)
	s.waitMails(t, 2)
	tl := s.timeline(t, mail, "composed", "rewritten", "held", "released", "deferred", "delivered")
	rw, def, del := tl.Steps[1], tl.Steps[4], tl.Steps[5]
	if rw.From == nil || rw.From.Reason == "" || rw.From.SendingAddress != "notifications@example.com" {
		t.Errorf("rewritten step = %+v, want the From decision and its reason", rw)
	}
	if def.Attempt != 1 || def.SMTP == nil || def.SMTP.Code != 451 || def.SMTP.EnhancedCode != "4.3.0" ||
		!strings.Contains(def.SMTP.Text, "try again later") || def.NextAttemptAt == nil || !def.NextAttemptAt.After(def.At) {
		t.Errorf("deferred step = %+v (smtp %+v), want attempt 1 with the 451 4.3.0 reply and the next attempt's time", def, def.SMTP)
	}
	if del.Attempt != 2 || del.SMTP == nil || del.SMTP.Code != 250 || del.At.Before(nextDay) {
		t.Errorf("delivered step = %+v (smtp %+v), want attempt 2 accepted with 250 in the next window", del, del.SMTP)
	}
	for i := 1; i < len(tl.Steps); i++ {
		if tl.Steps[i].Seq <= tl.Steps[i-1].Seq {
			t.Errorf("timeline steps out of stream order: %+v", tl.Steps)
		}
	}
}

// A Go service posts with the client package over NATS; the email
// arrives at the SMTP capture, and the service replays the outcome.
func TestPostReachesCaptureFromGoClient(t *testing.T) {
	s := startAPISystem(t)
	nc, err := nats.Connect(s.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc, "acme")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := c.Post(ctx, &cmv1.ChatterPost{
		Thread:         &cmv1.ThreadRef{Model: "helpdesk.ticket", Id: "7", DisplayName: "Printer on fire"},
		Author:         &cmv1.Partner{Name: "Desk Bot", Email: "bot@example.com", Internal: true},
		Subject:        "Ticket updated",
		BodyText:       "We are on it.",
		IdempotencyKey: "ticket-7-update-1",
		Followers:      []*cmv1.Follower{{Partner: &cmv1.Partner{Name: "Dora", Email: "dora@customer.example"}}},
	})
	if err != nil || len(a.GetMailIds()) != 1 {
		t.Fatalf("client Post = %v, %v, want one mail id", a, err)
	}
	msgs := s.waitMails(t, 1)
	if h, _ := msgs[0].Header(); len(msgs[0].To) != 1 || msgs[0].To[0] != "dora@customer.example" || h.Get("Message-Id") != "<"+a.GetMessageId()+">" {
		t.Errorf("captured mail to %v with Message-ID %q, want dora with <%s>", msgs[0].To, h.Get("Message-Id"), a.GetMessageId())
	}
	// The outcome is on the event stream, replayable from its start.
	var outcomes []string
	err = c.ReplayMailEvents(ctx, client.From{}, func(e client.Event) error {
		if e.GetMailId() == a.GetMailIds()[0] {
			outcomes = append(outcomes, e.GetOutcome().String())
		}
		if e.GetOutcome() == cmv1.Outcome_OUTCOME_DELIVERED {
			return errDelivered
		}
		return nil
	})
	if err != errDelivered || !slices.Equal(outcomes, []string{"OUTCOME_COMPOSED", "OUTCOME_REWRITTEN", "OUTCOME_DELIVERED"}) {
		t.Errorf("replayed outcomes of the mail = %q (%v), want composed, rewritten, delivered", outcomes, err)
	}
}

var errDelivered = fmt.Errorf("delivered")
