package quota

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
)

// AdminHandler serves the quota admin API, for the admin port:
//
//	GET    /quota/{tenant}   the tenant's Status, as JSON
//	PUT    /quota/{tenant}   {"daily_limit": 500} sets the runtime limit;
//	                         {"daily_limit": null} clears it; answers the new Status
//	DELETE /quota/{tenant}   clears the runtime limit; answers the new Status
//
// A changed limit applies at once: this service passes over the tenant's
// held line right away, and the others hear of it on LimitChannel.
//
// Every request needs "Authorization: Bearer <Options.AdminToken>" (401
// otherwise). Without a configured token every request is refused (403),
// except, with Options.AdminLoopback (chattermail dev), requests from a
// loopback address. Errors are JSON {"error": "..."}: 400 for a bad body,
// 404 for an unknown tenant, 503 when Redis does not answer.
func (s *Service) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /quota/{tenant}", s.adminStatus)
	mux.HandleFunc("PUT /quota/{tenant}", s.adminSet)
	mux.HandleFunc("DELETE /quota/{tenant}", s.adminClear)
	return s.adminAuth(mux)
}

// adminAuth checks the bearer token (see AdminHandler).
func (s *Service) adminAuth(next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(s.o.AdminToken))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.o.AdminToken == "" {
			if s.o.AdminLoopback && isLoopback(r.RemoteAddr) {
				next.ServeHTTP(w, r)
				return
			}
			writeAdminError(w, http.StatusForbidden, "quota admin API disabled: no admin token is configured (ADMIN_TOKEN_FILE)")
			return
		}
		scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		got := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="chattermail-admin"`)
			writeAdminError(w, http.StatusUnauthorized, "missing or wrong admin token: send Authorization: Bearer <token>")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Service) adminStatus(w http.ResponseWriter, r *http.Request) {
	t := s.o.Config.Tenant(r.PathValue("tenant"))
	if t == nil {
		writeAdminError(w, http.StatusNotFound, "unknown tenant "+r.PathValue("tenant"))
		return
	}
	ctx, cancel := s.rctx(r.Context())
	defer cancel()
	st, err := s.ledger.Status(ctx, t, s.o.Now())
	if err != nil {
		writeAdminError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeAdminJSON(w, http.StatusOK, st)
}

// limitChange is the body of PUT /quota/{tenant}.
type limitChange struct {
	// DailyLimit is the new runtime limit; null clears it.
	DailyLimit *int64 `json:"daily_limit"`
}

func (s *Service) adminSet(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var c limitChange
	if err := dec.Decode(&c); err != nil || !bytes.Contains(body, []byte(`"daily_limit"`)) {
		writeAdminError(w, http.StatusBadRequest, `body must be {"daily_limit": <integer from 0>} or {"daily_limit": null}`)
		return
	}
	s.changeLimit(w, r, c.DailyLimit)
}

func (s *Service) adminClear(w http.ResponseWriter, r *http.Request) {
	s.changeLimit(w, r, nil)
}

// changeLimit sets (n) or clears (nil) the runtime limit and answers the
// new status.
func (s *Service) changeLimit(w http.ResponseWriter, r *http.Request, n *int64) {
	t := s.o.Config.Tenant(r.PathValue("tenant"))
	if t == nil {
		writeAdminError(w, http.StatusNotFound, "unknown tenant "+r.PathValue("tenant"))
		return
	}
	ctx, cancel := s.rctx(r.Context())
	defer cancel()
	var err error
	if n == nil {
		err = s.ledger.ClearLimit(ctx, t.ID)
	} else {
		err = s.ledger.SetLimit(ctx, t.ID, *n)
	}
	switch {
	case errors.Is(err, ErrBadLimit):
		writeAdminError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		writeAdminError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.sched.kick(t.ID)
	if n == nil {
		s.o.Log.Info("runtime daily limit cleared through the admin API", "tenant", t.ID, "remote", r.RemoteAddr)
	} else {
		s.o.Log.Info("runtime daily limit set through the admin API", "tenant", t.ID, "daily_limit", *n, "remote", r.RemoteAddr)
	}
	st, err := s.ledger.Status(ctx, t, s.o.Now())
	if err != nil {
		writeAdminError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeAdminJSON(w, http.StatusOK, st)
}

func writeAdminJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeAdminError(w http.ResponseWriter, code int, msg string) {
	writeAdminJSON(w, code, map[string]string{"error": msg})
}
