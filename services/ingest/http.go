package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// publishTimeout bounds how long an HTTP request waits for the POSTS
// stream to acknowledge a post before it answers 503.
const publishTimeout = 5 * time.Second

// PostAnswer is the body of a 202 answer to POST /v1/posts.
type PostAnswer struct {
	// PostID identifies the post; a retry with the same idempotency key
	// gets the same one.
	PostID string `json:"post_id"`
	// MessageID is the RFC 5322 Message-ID, without angle brackets, that
	// every email copy of the post carries.
	MessageID string `json:"message_id"`
}

// ErrorAnswer is the body of every error answer of the HTTP API.
type ErrorAnswer struct {
	// Error says what was wrong, in words meant for the caller.
	Error string `json:"error"`
}

// Handler returns the public HTTP API:
//
//	POST /v1/posts
//	Authorization: Bearer <tenant API key>
//	Idempotency-Key: <optional, up to 255 printable characters>
//	Content-Type: application/json
//
//	{"tenant":"acme","thread":{"model":"crm.lead","id":"42"},
//	 "author":{"name":"Bob","email":"bob@example.com"},
//	 "subject":"Hello","bodyText":"Hi all",
//	 "followers":[{"partner":{"email":"ann@example.org"}}]}
//
// The body is the JSON form (protojson, camelCase or snake_case names) of
// a chattermail.v1.ChatterPost; unknown fields are errors. The post is
// stored on chatter.post.<tenant> and fanned out by Run.
//
// Answers: 202 {"post_id","message_id"} once the post is stored; 400 for
// a body that is not a ChatterPost; 401 for a missing or unknown API key;
// 403 when the key belongs to another tenant than the body's; 413 for a
// body over MaxBodyBytes; 422 for an invalid post (see Validate); 503
// when the bus cannot store the post (retry with the same idempotency
// key). Errors are JSON {"error": "..."}.
//
// The handler sets source HTTP and posted_at from the clock and clears
// inbound_id. It always assigns post_id, ignoring one in the body: random,
// or derived from tenant and idempotency key (the Idempotency-Key header
// or the idempotency_key field) so that a retried request is stored once,
// as long as it comes within the POSTS stream's duplicate window (10
// minutes by default).
func (s *Service) Handler() http.Handler { return s.handler }

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/posts", s.servePosts)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	return mux
}

func (s *Service) servePosts(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed; use POST")
		return
	}
	key, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="chattermail"`)
		writeError(w, http.StatusUnauthorized, "missing API key: send Authorization: Bearer <api key>")
		return
	}
	tenants := s.tenantsForKey(key)
	if len(tenants) == 0 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="chattermail", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "unknown API key")
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
	p.PostedAt = timestamppb.New(s.o.Now())
	p.InboundId = ""
	if err := Validate(&p); err != nil {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}

	if err := s.o.Bus.Ready(); err != nil {
		s.o.Log.Warn("post refused: NATS unavailable", "tenant", p.GetTenant(), "err", err)
		unavailable(w)
		return
	}
	ctx := bus.WithTrace(r.Context(), bus.Trace{
		CorrelationID: bus.NewCorrelationID(),
		TraceParent:   r.Header.Get(bus.HeaderTraceParent),
	})
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if err := s.o.Bus.Publish(ctx, bus.Subject(bus.PostPrefix, p.GetTenant()), &p, bus.MsgID(p.GetPostId(), "post")); err != nil {
		s.o.Log.Warn("post refused: publish failed", "tenant", p.GetTenant(), "post_id", p.GetPostId(), "err", err)
		unavailable(w)
		return
	}
	s.o.Log.Debug("post accepted", "tenant", p.GetTenant(), "post_id", p.GetPostId(), "correlation_id", bus.TraceFrom(ctx).CorrelationID)
	writeJSON(w, http.StatusAccepted, PostAnswer{PostID: p.GetPostId(), MessageID: MessageID(p.GetPostId(), t)})
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
