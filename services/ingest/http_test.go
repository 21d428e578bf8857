package ingest_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest"
)

// sampleBody is the example post of the API documentation.
const sampleBody = `{"tenant":"acme","thread":{"model":"crm.lead","id":"42","displayName":"Big deal"},` +
	`"author":{"name":"Bob","email":"bob@example.com"},"subject":"Hello","bodyText":"Hi all",` +
	`"bodyHtml":"<p>Hi all</p>","followers":[{"partner":{"name":"Ann","email":"ann@example.org"}},` +
	`{"partner":{"email":"bob@example.com"}}]}`

// withField returns sampleBody with one top-level field replaced (or
// removed when value is nil).
func withField(t *testing.T, name string, value any) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(sampleBody), &m); err != nil {
		t.Fatal(err)
	}
	if value == nil {
		delete(m, name)
	} else {
		m[name] = value
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// chunked hides the length of a body, so the server cannot refuse it
// before reading.
type chunked struct{ io.Reader }

var postIDRE = regexp.MustCompile(`^[a-z2-7]{26}$`)

func TestPostStatus(t *testing.T) {
	e := newEnv(t, noWait, func(o *ingest.Options) { o.MaxBodyBytes = 4096 })
	big := withField(t, "bodyText", strings.Repeat("x", 5000))
	tests := []struct {
		name   string
		key    string
		body   io.Reader
		header []string
		want   int
		// wantErr is a fragment of the JSON error message.
		wantErr string
	}{
		{name: "valid post", key: acmeKey, body: strings.NewReader(sampleBody), want: http.StatusAccepted},
		{name: "snake_case names", key: acmeKey, body: strings.NewReader(strings.NewReplacer(`"bodyText"`, `"body_text"`, `"displayName"`, `"display_name"`).Replace(sampleBody)), want: http.StatusAccepted},
		{name: "no API key", body: strings.NewReader(sampleBody), want: http.StatusUnauthorized, wantErr: "API key"},
		{name: "unknown API key", key: "guess", body: strings.NewReader(sampleBody), want: http.StatusUnauthorized, wantErr: "unknown API key"},
		{name: "basic auth", body: strings.NewReader(sampleBody), header: []string{"Authorization", "Basic YWNtZTprZXk="}, want: http.StatusUnauthorized},
		{name: "another tenant's key", key: globexKey, body: strings.NewReader(sampleBody), want: http.StatusForbidden, wantErr: `tenant "acme"`},
		{name: "unknown tenant", key: acmeKey, body: strings.NewReader(withField(t, "tenant", "initech")), want: http.StatusForbidden},
		{name: "body too large", key: acmeKey, body: strings.NewReader(big), want: http.StatusRequestEntityTooLarge, wantErr: "larger than 4096"},
		{name: "body too large, no length", key: acmeKey, body: chunked{strings.NewReader(big)}, want: http.StatusRequestEntityTooLarge},
		{name: "not JSON", key: acmeKey, body: strings.NewReader(`tenant=acme`), want: http.StatusBadRequest, wantErr: "not a JSON"},
		{name: "misspelt field", key: acmeKey, body: strings.NewReader(withField(t, "subjet", "Hello")), want: http.StatusBadRequest, wantErr: "subjet"},
		{name: "wrong type", key: acmeKey, body: strings.NewReader(withField(t, "subject", 42)), want: http.StatusBadRequest},
		{name: "missing tenant", key: acmeKey, body: strings.NewReader(withField(t, "tenant", nil)), want: http.StatusUnprocessableEntity, wantErr: "tenant is required"},
		{name: "missing thread", key: acmeKey, body: strings.NewReader(withField(t, "thread", nil)), want: http.StatusUnprocessableEntity, wantErr: "thread is required"},
		{name: "missing thread id", key: acmeKey, body: strings.NewReader(withField(t, "thread", map[string]any{"model": "crm.lead"})), want: http.StatusUnprocessableEntity, wantErr: "thread.id"},
		{name: "missing thread model", key: acmeKey, body: strings.NewReader(withField(t, "thread", map[string]any{"id": "42"})), want: http.StatusUnprocessableEntity, wantErr: "thread.model"},
		{name: "missing author", key: acmeKey, body: strings.NewReader(withField(t, "author", nil)), want: http.StatusUnprocessableEntity, wantErr: "author"},
		{name: "author without email", key: acmeKey, body: strings.NewReader(withField(t, "author", map[string]any{"name": "Bob"})), want: http.StatusUnprocessableEntity, wantErr: "author.email"},
		{name: "author with display name", key: acmeKey, body: strings.NewReader(withField(t, "author", map[string]any{"email": "Bob <bob@example.com>"})), want: http.StatusUnprocessableEntity, wantErr: "author.email"},
		{name: "two authors", key: acmeKey, body: strings.NewReader(withField(t, "author", map[string]any{"email": "bob@example.com, eve@example.com"})), want: http.StatusUnprocessableEntity, wantErr: "author.email"},
		{name: "author with CRLF", key: acmeKey, body: strings.NewReader(withField(t, "author", map[string]any{"email": "bob@example.com\r\nBcc: eve@example.com"})), want: http.StatusUnprocessableEntity, wantErr: "CR, LF or NUL"},
		{name: "invalid follower", key: acmeKey, body: strings.NewReader(withField(t, "followers", []any{map[string]any{"partner": map[string]any{"email": "ann"}}})), want: http.StatusUnprocessableEntity, wantErr: "followers[0].partner.email"},
		{name: "invalid recipient", key: acmeKey, body: strings.NewReader(withField(t, "recipients", []any{map[string]any{"email": "dan@"}})), want: http.StatusUnprocessableEntity, wantErr: "recipients[0].email"},
		{name: "no subject, no body", key: acmeKey, body: strings.NewReader(`{"tenant":"acme","thread":{"model":"crm.lead","id":"42"},"author":{"email":"bob@example.com"}}`), want: http.StatusUnprocessableEntity, wantErr: "a subject or a body"},
		{name: "idempotency header and field differ", key: acmeKey, body: strings.NewReader(withField(t, "idempotencyKey", "a")), header: []string{"Idempotency-Key", "b"}, want: http.StatusUnprocessableEntity, wantErr: "differ"},
	}
	for _, tt := range tests {
		status, h, body := e.post(tt.key, tt.body, tt.header...)
		if status != tt.want {
			t.Errorf("POST /v1/posts (%s) = %d %s, want %d", tt.name, status, body, tt.want)
			continue
		}
		if ct := h.Get("Content-Type"); ct != "application/json" {
			t.Errorf("POST /v1/posts (%s) Content-Type = %q, want application/json", tt.name, ct)
		}
		if status == http.StatusUnauthorized && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("POST /v1/posts (%s) WWW-Authenticate = %q, want Bearer", tt.name, h.Get("WWW-Authenticate"))
		}
		if status == http.StatusAccepted {
			var a ingest.PostAnswer
			if err := json.Unmarshal([]byte(body), &a); err != nil || !postIDRE.MatchString(a.PostID) || a.MessageID != a.PostID+"@example.com" {
				t.Errorf("POST /v1/posts (%s) = %s, want a post id of 26 [a-z2-7] and message id <post id>@example.com", tt.name, body)
			}
			continue
		}
		var a ingest.ErrorAnswer
		if err := json.Unmarshal([]byte(body), &a); err != nil || a.Error == "" || !strings.Contains(a.Error, tt.wantErr) {
			t.Errorf("POST /v1/posts (%s) = %d %s, want JSON {\"error\"} containing %q", tt.name, status, body, tt.wantErr)
		}
	}
	// Only the two valid posts are stored.
	if n := len(e.msgs(bus.StreamPosts, "")); n != 2 {
		t.Errorf("POSTS holds %d posts after the status table, want 2", n)
	}
	e.assertLogsClean("Hi all")
}

func TestPostStoresThePost(t *testing.T) {
	e := newEnv(t, noWait)
	status, _, body := e.post(acmeKey, strings.NewReader(withField(t, "postId", "chosen-by-client")), "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	if status != http.StatusAccepted {
		t.Fatalf("POST /v1/posts = %d %s, want 202", status, body)
	}
	var a ingest.PostAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		t.Fatal(err)
	}
	msgs := e.msgs(bus.StreamPosts, "chatter.post.acme")
	if len(msgs) != 1 {
		t.Fatalf("chatter.post.acme holds %d posts, want 1", len(msgs))
	}
	p := decode[cmv1.ChatterPost](t, msgs)[0]
	checks := []struct {
		what      string
		got, want any
	}{
		{"post_id", p.GetPostId(), a.PostID},
		{"source", p.GetSource(), cmv1.PostSource_POST_SOURCE_HTTP},
		{"posted_at", p.GetPostedAt().AsTime(), clock},
		{"subject", p.GetSubject(), "Hello"},
		{"followers", len(p.GetFollowers()), 2},
		{"Nats-Msg-Id", msgs[0].Header.Get("Nats-Msg-Id"), bus.MsgID(a.PostID, "post")},
		{"traceparent", msgs[0].Header.Get(bus.HeaderTraceParent), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"correlation id set", msgs[0].Header.Get(bus.HeaderCorrelation) != "", true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("stored post %s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if a.PostID == "chosen-by-client" {
		t.Errorf("POST /v1/posts kept the client's post_id %q, want one assigned by ingest", a.PostID)
	}
}

func TestPostIdempotencyKey(t *testing.T) {
	e := newEnv(t, noWait)
	var ids []string
	for _, req := range []struct {
		body   string
		header []string
	}{
		{sampleBody, []string{"Idempotency-Key", "order-7"}},
		{sampleBody, []string{"Idempotency-Key", `"order-7"`}}, // structured-field string form
		{withField(t, "idempotency_key", "order-7"), nil},      // field instead of header
	} {
		status, _, body := e.post(acmeKey, strings.NewReader(req.body), req.header...)
		if status != http.StatusAccepted {
			t.Fatalf("POST /v1/posts with idempotency key = %d %s, want 202", status, body)
		}
		var a ingest.PostAnswer
		if err := json.Unmarshal([]byte(body), &a); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.PostID)
	}
	for i, id := range ids {
		if id != ids[0] {
			t.Errorf("POST /v1/posts retry %d with Idempotency-Key order-7 = post_id %q, want %q", i, id, ids[0])
		}
	}
	if n := len(e.msgs(bus.StreamPosts, "")); n != 1 {
		t.Errorf("POSTS holds %d posts after %d requests with one idempotency key, want 1", n, len(ids))
	}

	// The same key for a different post is a conflict: nothing is stored.
	status, _, body := e.post(acmeKey, strings.NewReader(withField(t, "subject", "Hello again")), "Idempotency-Key", "order-7")
	if status != http.StatusConflict || !strings.Contains(body, "Idempotency-Key") {
		t.Errorf("POST /v1/posts with Idempotency-Key order-7 and another subject = %d %s, want 409", status, body)
	}
	if n := len(e.msgs(bus.StreamPosts, "")); n != 1 {
		t.Errorf("POSTS holds %d posts after a conflicting key, want 1", n)
	}

	// The same key for another request without it, or for another
	// tenant, is another post.
	_, _, body = e.post(acmeKey, strings.NewReader(sampleBody))
	var a ingest.PostAnswer
	_ = json.Unmarshal([]byte(body), &a)
	if a.PostID == ids[0] {
		t.Errorf("POST /v1/posts without idempotency key = post_id %q, the keyed post's id", a.PostID)
	}
	_, _, body = e.post(globexKey, strings.NewReader(withField(t, "tenant", "globex")), "Idempotency-Key", "order-7")
	_ = json.Unmarshal([]byte(body), &a)
	if a.PostID == ids[0] || a.MessageID != a.PostID+"@globex.test" {
		t.Errorf("POST /v1/posts for globex with Idempotency-Key order-7 = %s, want its own post id and @globex.test", body)
	}
}

func TestPostWithoutNATSIsUnavailable(t *testing.T) {
	e := newEnv(t)
	e.nats.Shutdown()
	testenv.Eventually(t, 10*time.Second, func() error {
		if e.bus.Ready() == nil {
			return errors.New("bus still reports ready")
		}
		return nil
	})
	status, h, body := e.post(acmeKey, strings.NewReader(sampleBody))
	if status != http.StatusServiceUnavailable || !strings.Contains(body, `"error"`) {
		t.Errorf("POST /v1/posts without NATS = %d %s, want 503 with a JSON error", status, body)
	}
	if h.Get("Retry-After") == "" {
		t.Error("503 answer has no Retry-After")
	}
}

func TestOtherRoutes(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/v1/posts", http.StatusMethodNotAllowed},
		{http.MethodPut, "/v1/posts", http.StatusMethodNotAllowed},
		{http.MethodGet, "/v1/nothing", http.StatusNotFound},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, e.http.URL+tt.path, nil)
		resp, err := e.http.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s = %d (%s), want %d with a JSON error", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.want)
		}
	}
}
