package ingest

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/status"
	"github.com/chattermail/chattermail/services/ingest/suppression"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"google.golang.org/protobuf/encoding/protojson"
)

// OpenAPI is the OpenAPI 3 description of the HTTP API (openapi.yaml),
// also served at GET /v1/openapi.yaml. The tests check every answer of
// the real handlers against it.
//
//go:embed openapi.yaml
var OpenAPI []byte

// PostAnswer is the body of a 202 answer to POST /v1/posts.
type PostAnswer = PostStatus

// ErrorAnswer is the body of every error answer of the HTTP API.
type ErrorAnswer struct {
	// Error says what was wrong, in words meant for the caller.
	Error string `json:"error"`
}

// Handler returns the public HTTP API, described in openapi.yaml (see
// OpenAPI). Every route but the unsubscribe links and the description
// takes "Authorization: Bearer <tenant API key>"; the key decides the
// tenant, which a key valid for several tenants names with ?tenant=.
//
//	POST   /v1/posts                                  post a message (Idempotency-Key)
//	GET    /v1/posts/{post_id}                        a post's fan-out
//	GET    /v1/threads/{model}/{id}                   a thread and its followers
//	PUT    /v1/threads/{model}/{id}/followers/{email} follow, or change a follower
//	DELETE /v1/threads/{model}/{id}/followers/{email} unfollow
//	GET    /v1/mails/{mail_id}                        one mail's status timeline
//	GET    /v1/suppressions                           the suppression list
//	POST   /v1/suppressions                           suppress an address
//	GET    /v1/suppressions/{email}                   one suppressed address
//	DELETE /v1/suppressions/{email}                   clear an address
//	GET    /v1/unsubscribe/{token}                    the one-click link's page
//	POST   /v1/unsubscribe/{token}                    one-click unsubscribe (RFC 8058)
//	GET    /v1/openapi.yaml                           this description
//
// Status codes: 400 for a body that is not the JSON expected; 401 for a
// missing or unknown API key; 403 when the key belongs to another tenant
// than the one named; 404 for a resource the tenant does not have
// (another tenant's resources are never found); 405 for a wrong method;
// 409 for an idempotency key already used with a different post, or an
// address already suppressed; 413 for a body over MaxBodyBytes; 422 for a
// well-formed body with invalid content; 503 when NATS is unavailable.
// Errors are JSON {"error": "..."}.
func (s *Service) Handler() http.Handler { return s.handler }

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/posts", methods{http.MethodPost: s.servePost})
	mux.Handle("/v1/posts/{post_id}", methods{http.MethodGet: s.authed(s.serveGetPost)})
	mux.Handle("/v1/threads/{model}/{id}", methods{http.MethodGet: s.authed(s.serveGetThread)})
	mux.Handle("/v1/threads/{model}/{id}/followers/{email}", methods{
		http.MethodPut:    s.authed(s.servePutFollower),
		http.MethodDelete: s.authed(s.serveDeleteFollower),
	})
	mux.Handle("/v1/mails/{mail_id}", methods{http.MethodGet: s.authed(s.serveGetMail)})
	mux.Handle("/v1/suppressions", methods{
		http.MethodGet:  s.authed(s.serveListSuppressions),
		http.MethodPost: s.authed(s.serveAddSuppression),
	})
	mux.Handle("/v1/suppressions/{email}", methods{
		http.MethodGet:    s.authed(s.serveGetSuppression),
		http.MethodDelete: s.authed(s.serveDeleteSuppression),
	})
	mux.Handle("/v1/unsubscribe/{token}", methods{http.MethodGet: s.serveUnsubscribe, http.MethodPost: s.serveUnsubscribe})
	mux.Handle("/v1/openapi.yaml", methods{http.MethodGet: func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(OpenAPI)
	}})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	return mux
}

// methods routes a path's requests by method and answers 405, in JSON
// with an Allow header, for the others.
type methods map[string]http.HandlerFunc

func (m methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h, ok := m[r.Method]; ok {
		h(w, r)
		return
	}
	allow := make([]string, 0, len(m))
	for k := range m {
		allow = append(allow, k)
	}
	slices.Sort(allow)
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed; use "+strings.Join(allow, " or "))
}

// tenantHandler serves a request authenticated for tenant t.
type tenantHandler func(w http.ResponseWriter, r *http.Request, t *config.Tenant)

// authed checks the API key and decides the tenant before h runs.
func (s *Service) authed(h tenantHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tenants, ok := s.authenticate(w, r)
		if !ok {
			return
		}
		want := r.URL.Query().Get("tenant")
		switch {
		case want != "" && !tenants[want]:
			writeError(w, http.StatusForbidden, fmt.Sprintf("this API key may not act for tenant %q", want))
			return
		case want == "" && len(tenants) > 1:
			writeError(w, http.StatusBadRequest, "this API key serves several tenants: name one with ?tenant=")
			return
		case want == "":
			for id := range tenants {
				want = id
			}
		}
		h(w, r, s.o.Config.Tenant(want))
	}
}

// authenticate returns the tenants the request's API key is valid for,
// or answers 401.
func (s *Service) authenticate(w http.ResponseWriter, r *http.Request) (map[string]bool, bool) {
	key, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="chattermail"`)
		writeError(w, http.StatusUnauthorized, "missing API key: send Authorization: Bearer <api key>")
		return nil, false
	}
	tenants := s.tenantsForKey(key)
	if len(tenants) == 0 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="chattermail", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "unknown API key")
		return nil, false
	}
	return tenants, true
}

// preferAsync reports whether the request carries "Prefer:
// respond-async" (RFC 7240).
func preferAsync(h http.Header) bool {
	for _, v := range h.Values("Prefer") {
		for _, pref := range strings.Split(v, ",") {
			name, _, _ := strings.Cut(strings.TrimSpace(pref), ";")
			if strings.EqualFold(strings.TrimSpace(name), "respond-async") {
				return true
			}
		}
	}
	return false
}

// servePost is POST /v1/posts. The body is the JSON form (protojson,
// camelCase or snake_case names) of a chattermail.v1.ChatterPost; unknown
// fields are errors. The handler sets source HTTP and posted_at from the
// clock and clears inbound_id. It always assigns post_id, ignoring one in
// the body: random, or derived from tenant and idempotency key (the
// Idempotency-Key header or the idempotency_key field), so that a retried
// request is stored once and answered with the same mail ids for
// PostsTTL. The same key with a different post is refused with 409. The
// answer waits up to FanOutWait for the fan-out, unless the request
// carries "Prefer: respond-async".
func (s *Service) servePost(w http.ResponseWriter, r *http.Request) {
	tenants, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	body, status, err := s.readBody(w, r)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	var p cmv1.ChatterPost
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(body, &p); err != nil {
		writeError(w, http.StatusBadRequest, "body is not a JSON chattermail.v1.ChatterPost: "+err.Error())
		return
	}
	if p.GetTenant() == "" {
		writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("%v: tenant is required", ErrInvalidPost))
		return
	}
	if !tenants[p.GetTenant()] {
		writeError(w, http.StatusForbidden, fmt.Sprintf("this API key may not post for tenant %q", p.GetTenant()))
		return
	}
	t := s.o.Config.Tenant(p.GetTenant())

	if h := r.Header.Get("Idempotency-Key"); h != "" {
		// The IETF draft makes the header a structured-field string, so a
		// quoted value is accepted too.
		if len(h) >= 2 && h[0] == '"' && h[len(h)-1] == '"' {
			h = h[1 : len(h)-1]
		}
		if f := p.GetIdempotencyKey(); f != "" && f != h {
			writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("%v: the Idempotency-Key header and the idempotency_key field differ", ErrInvalidPost))
			return
		}
		p.IdempotencyKey = h
	}
	if key := p.GetIdempotencyKey(); key != "" {
		p.PostId = postIDForKey(p.GetTenant(), key)
	} else {
		p.PostId = newPostID()
	}
	p.Source = cmv1.PostSource_POST_SOURCE_HTTP
	p.PostedAt = nowpb(s.o.Now())
	p.InboundId = ""
	if err := Validate(&p); err != nil {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}

	ctx := bus.WithTrace(r.Context(), bus.Trace{
		CorrelationID: bus.NewCorrelationID(),
		TraceParent:   r.Header.Get(bus.HeaderTraceParent),
	})
	wait := s.o.FanOutWait
	if preferAsync(r.Header) {
		// RFC 7240 §4.1: answer as soon as the post is stored.
		wait = -1
		w.Header().Set("Preference-Applied", "respond-async")
	}
	st, err := s.accept(ctx, t, &p, wait)
	if errors.Is(err, ErrIdempotencyConflict) {
		writeError(w, http.StatusConflict, "the Idempotency-Key was already used for a different post; use a new key for a new post")
		return
	}
	if err != nil {
		s.o.Log.Warn("post refused: NATS unavailable", "tenant", p.GetTenant(), "post_id", p.GetPostId(), "err", err)
		unavailable(w)
		return
	}
	writeJSON(w, http.StatusAccepted, st)
}

// serveGetPost is GET /v1/posts/{post_id}.
func (s *Service) serveGetPost(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	id := r.PathValue("post_id")
	if !postIDRE.MatchString(id) {
		writeError(w, http.StatusNotFound, "no such post")
		return
	}
	st, _, err := s.posts.get(r.Context(), t.ID, id)
	if err != nil {
		s.storeFailed(w, "post", t.ID, err)
		return
	}
	if st == nil || st.Tenant != t.ID {
		writeError(w, http.StatusNotFound, "no such post")
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// threadPath returns the thread named by the path, or answers 404.
func threadPath(w http.ResponseWriter, r *http.Request) (model, id string, ok bool) {
	model, id = r.PathValue("model"), r.PathValue("id")
	if err := checkThread(&cmv1.ThreadRef{Model: model, Id: id}); err != nil {
		writeError(w, http.StatusNotFound, "no such thread: "+err.Error())
		return "", "", false
	}
	return model, id, true
}

// ThreadAnswer is the body of GET /v1/threads/{model}/{id}.
type ThreadAnswer struct {
	*threads.Thread
	// Revision is the thread's KV revision; it grows with every change.
	Revision uint64 `json:"revision"`
}

// serveGetThread is GET /v1/threads/{model}/{id}.
func (s *Service) serveGetThread(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	model, id, ok := threadPath(w, r)
	if !ok {
		return
	}
	th, err := s.threads.Get(r.Context(), t.ID, model, id)
	if errors.Is(err, threads.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no such thread")
		return
	}
	if err != nil {
		s.storeFailed(w, "thread", t.ID, err)
		return
	}
	writeJSON(w, http.StatusOK, ThreadAnswer{Thread: th, Revision: th.Revision})
}

// FollowerRequest is the body of PUT /v1/threads/{model}/{id}/followers/{email}.
type FollowerRequest struct {
	// Name is the display name; may be empty.
	Name string `json:"name"`
	// PartnerID is the application's id for the partner; the user token of
	// inbox notifications.
	PartnerID string `json:"partner_id"`
	// Internal is true for the application's own users.
	Internal bool `json:"internal"`
	// Preference is "email" (default) or "inbox".
	Preference threads.Preference `json:"preference"`
	// Subtypes the follower receives; empty means every subtype.
	Subtypes []string `json:"subtypes"`
	// Active defaults to true; false keeps the follower but mutes it.
	Active *bool `json:"active"`
}

// servePutFollower is PUT /v1/threads/{model}/{id}/followers/{email}:
// follow the thread (201), or change the follower (200). It also lifts an
// earlier one-click unsubscription of the address. The thread is created
// when it does not exist yet.
func (s *Service) servePutFollower(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	model, id, ok := threadPath(w, r)
	if !ok {
		return
	}
	email := r.PathValue("email")
	if _, err := NormalizeAddress(email); err != nil {
		writeError(w, http.StatusUnprocessableEntity, "follower email "+err.Error())
		return
	}
	var req FollowerRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	f := threads.Follower{Email: email, Name: req.Name, PartnerID: req.PartnerID, Internal: req.Internal,
		Preference: req.Preference, Subtypes: req.Subtypes, Active: req.Active == nil || *req.Active}
	if err := checkFollower(&f); err != nil {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	var created bool
	th, err := s.threads.Update(r.Context(), t.ID, model, id, func(th *threads.Thread) error {
		var err error
		created, _, err = th.Follow(f, s.o.Now(), true)
		return err
	})
	if errors.Is(err, threads.ErrTooManyFollowers) {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err != nil {
		s.storeFailed(w, "thread", t.ID, err)
		return
	}
	norm, _ := NormalizeAddress(email)
	got, _ := th.Lookup(norm)
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	writeJSON(w, code, got)
}

func checkFollower(f *threads.Follower) error {
	switch f.Preference {
	case "":
		f.Preference = threads.PreferenceEmail
	case threads.PreferenceEmail, threads.PreferenceInbox:
	default:
		return fmt.Errorf("preference %q must be email or inbox", f.Preference)
	}
	if hasLineBreak(f.Name) {
		return errors.New("name must not contain CR, LF or NUL")
	}
	if hasControl(f.PartnerID) || len(f.PartnerID) > 255 {
		return errors.New("partner_id must be at most 255 characters without control characters")
	}
	if len(f.Subtypes) > 32 {
		return errors.New("at most 32 subtypes")
	}
	for _, st := range f.Subtypes {
		if st == "" || len(st) > 64 || hasControl(st) || strings.ContainsRune(st, ' ') {
			return fmt.Errorf("subtype %q must be 1-64 characters without spaces or control characters", st)
		}
	}
	return nil
}

// serveDeleteFollower is DELETE /v1/threads/{model}/{id}/followers/{email}.
func (s *Service) serveDeleteFollower(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	model, id, ok := threadPath(w, r)
	if !ok {
		return
	}
	addr, err := NormalizeAddress(r.PathValue("email"))
	if err != nil {
		writeError(w, http.StatusNotFound, "no such follower")
		return
	}
	if _, err := s.threads.Get(r.Context(), t.ID, model, id); errors.Is(err, threads.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no such thread")
		return
	}
	found := false
	_, err = s.threads.Update(r.Context(), t.ID, model, id, func(th *threads.Thread) error {
		if found = th.Unfollow(addr); !found {
			return threads.ErrNoChange
		}
		return nil
	})
	if err != nil {
		s.storeFailed(w, "thread", t.ID, err)
		return
	}
	if !found {
		writeError(w, http.StatusNotFound, "no such follower")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// serveGetMail is GET /v1/mails/{mail_id}.
func (s *Service) serveGetMail(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	tl, err := s.status.Get(r.Context(), t.ID, r.PathValue("mail_id"))
	if errors.Is(err, status.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no such mail")
		return
	}
	if err != nil {
		s.storeFailed(w, "mail", t.ID, err)
		return
	}
	writeJSON(w, http.StatusOK, tl)
}

// SuppressionList is the body of GET /v1/suppressions.
type SuppressionList struct {
	Suppressions []suppression.Entry `json:"suppressions"`
}

// SuppressionRequest is the body of POST /v1/suppressions.
type SuppressionRequest struct {
	// Email is the address to suppress. Required.
	Email string `json:"email"`
	// Reason says why; may be empty.
	Reason string `json:"reason"`
}

func (s *Service) serveListSuppressions(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	list, err := s.suppression.Entries(r.Context(), t.ID)
	if err != nil {
		s.storeFailed(w, "suppression list", t.ID, err)
		return
	}
	writeJSON(w, http.StatusOK, SuppressionList{Suppressions: list})
}

func (s *Service) serveAddSuppression(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	var req SuppressionRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	if _, err := NormalizeAddress(req.Email); err != nil {
		writeError(w, http.StatusUnprocessableEntity, "email "+err.Error())
		return
	}
	if hasLineBreak(req.Reason) || len(req.Reason) > suppression.MaxReasonLen {
		writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("reason must be one line of at most %d bytes", suppression.MaxReasonLen))
		return
	}
	e, created, err := s.suppression.Suppress(r.Context(), t.ID, req.Email, req.Reason, "api")
	if err != nil {
		s.storeFailed(w, "suppression list", t.ID, err)
		return
	}
	if !created {
		writeError(w, http.StatusConflict, "the address is already suppressed since "+e.AddedAt.Format("2006-01-02T15:04:05Z07:00"))
		return
	}
	s.o.Log.Info("address suppressed", "tenant", t.ID, "source", "api")
	writeJSON(w, http.StatusCreated, e)
}

func (s *Service) serveGetSuppression(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	e, found, err := s.suppression.IsSuppressed(r.Context(), t.ID, r.PathValue("email"))
	if errors.Is(err, suppression.ErrInvalidAddress) || err == nil && !found {
		writeError(w, http.StatusNotFound, "the address is not suppressed")
		return
	}
	if err != nil {
		s.storeFailed(w, "suppression list", t.ID, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (s *Service) serveDeleteSuppression(w http.ResponseWriter, r *http.Request, t *config.Tenant) {
	err := s.suppression.Unsuppress(r.Context(), t.ID, r.PathValue("email"))
	if errors.Is(err, suppression.ErrInvalidAddress) || errors.Is(err, suppression.ErrNotSuppressed) {
		writeError(w, http.StatusNotFound, "the address is not suppressed")
		return
	}
	if err != nil {
		s.storeFailed(w, "suppression list", t.ID, err)
		return
	}
	s.o.Log.Info("address unsuppressed", "tenant", t.ID, "source", "api")
	w.WriteHeader(http.StatusNoContent)
}

// storeFailed answers 503 for a KV error.
func (s *Service) storeFailed(w http.ResponseWriter, what, tenant string, err error) {
	s.o.Log.Warn("store unavailable", "what", what, "tenant", tenant, "err", err)
	w.Header().Set("Retry-After", "5")
	writeError(w, http.StatusServiceUnavailable, "the "+what+" could not be read or written because the message bus is unavailable; retry")
}

// decodeJSON reads a JSON object into v, refusing unknown fields; it
// answers 413 or 400 and returns false when it cannot.
func (s *Service) decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, status, err := s.readBody(w, r)
	if err != nil {
		writeError(w, status, err.Error())
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "body is not the JSON object expected: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "body holds more than one JSON value")
		return false
	}
	return true
}

// tenantsForKey returns the tenants key is valid for.
func (s *Service) tenantsForKey(key string) map[string]bool {
	var ids map[string]bool
	for id, t := range s.o.Config.Tenants {
		if t.CheckAPIKey(key) {
			if ids == nil {
				ids = map[string]bool{}
			}
			ids[id] = true
		}
	}
	return ids
}

// readBody reads the request body up to MaxBodyBytes; on error it also
// returns the status to answer.
func (s *Service) readBody(w http.ResponseWriter, r *http.Request) ([]byte, int, error) {
	tooLarge := fmt.Errorf("body is larger than %d bytes", s.o.MaxBodyBytes)
	if r.ContentLength > s.o.MaxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, http.StatusRequestEntityTooLarge, tooLarge
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading body: %v", err)
	}
	return body, 0, nil
}

// bearerToken extracts the token of an "Authorization: Bearer <token>"
// header (RFC 6750 §2.1; the scheme is case-insensitive).
func bearerToken(h string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func unavailable(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "5")
	writeError(w, http.StatusServiceUnavailable, "the post could not be stored because the message bus is unavailable; retry with the same Idempotency-Key")
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorAnswer{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
