package quota

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// adminSrv serves a service's AdminHandler over HTTP.
type adminSrv struct{ url string }

func adminServer(t *testing.T, svc *Service) *adminSrv {
	t.Helper()
	srv := httptest.NewServer(svc.AdminHandler())
	t.Cleanup(srv.Close)
	return &adminSrv{url: srv.URL}
}

// do sends a request with token (none when "") and returns the status
// code and body.
func (a *adminSrv) do(t *testing.T, method, path, body, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, a.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminHandlerAuthentication(t *testing.T) {
	e := newEnv(t, tenantYAML(200, ""), "")
	tests := []struct {
		name      string
		token     string // Options.AdminToken
		loopback  bool   // Options.AdminLoopback
		remote    string
		authz     string
		wantCode  int
		wantInErr string
	}{
		{"token, none sent", "s3cret", false, "192.0.2.1:4000", "", 401, "admin token"},
		{"token, wrong one", "s3cret", false, "192.0.2.1:4000", "Bearer s3cre", 401, "admin token"},
		{"token, not bearer", "s3cret", false, "192.0.2.1:4000", "Basic s3cret", 401, "admin token"},
		{"token, right one", "s3cret", false, "192.0.2.1:4000", "Bearer s3cret", 200, ""},
		{"token, scheme in any case", "s3cret", false, "192.0.2.1:4000", "bearer s3cret", 200, ""},
		{"token, loopback still needs it", "s3cret", true, "127.0.0.1:4000", "", 401, "admin token"},
		{"no token: refused", "", false, "127.0.0.1:4000", "Bearer anything", 403, "ADMIN_TOKEN_FILE"},
		{"no token, dev: loopback served", "", true, "127.0.0.1:4000", "", 200, ""},
		{"no token, dev: IPv6 loopback served", "", true, "[::1]:4000", "", 200, ""},
		{"no token, dev: others refused", "", true, "192.0.2.1:4000", "", 403, "ADMIN_TOKEN_FILE"},
	}
	for _, tt := range tests {
		svc, err := New(Options{Bus: e.bus, Config: e.cfg, Log: discardLog(), Redis: e.rdb, Now: e.clock.Now,
			AdminToken: tt.token, AdminLoopback: tt.loopback})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest("GET", "/quota/acme", nil)
		req.RemoteAddr = tt.remote
		if tt.authz != "" {
			req.Header.Set("Authorization", tt.authz)
		}
		rec := httptest.NewRecorder()
		svc.AdminHandler().ServeHTTP(rec, req)
		if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantInErr) {
			t.Errorf("%s: GET /quota/acme = %d %q, want %d mentioning %q", tt.name, rec.Code, rec.Body.String(), tt.wantCode, tt.wantInErr)
		}
		if rec.Code == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate = %q, want Bearer", tt.name, rec.Header().Get("WWW-Authenticate"))
		}
	}
}

func TestAdminHandlerShowsAndChangesTheLimit(t *testing.T) {
	e := newEnv(t, tenantYAML(200, "Europe/Paris"), "")
	svc, err := New(Options{Bus: e.bus, Config: e.cfg, Log: discardLog(), Redis: e.rdb, Now: e.clock.Now, AdminToken: "k"})
	if err != nil {
		t.Fatal(err)
	}
	a := adminServer(t, svc)
	status := func(body string) Status {
		t.Helper()
		var st Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		return st
	}

	code, body := a.do(t, "GET", "/quota/acme", "", "k")
	st := status(body)
	if code != 200 || st.Tenant != "acme" || st.Window != "2026-11-24" || st.Limit != 200 || st.LimitSource != "file" ||
		st.TimeZone != "Europe/Paris" || st.ResetsAt.Format("2006-01-02T15:04:05Z07:00") != "2026-11-25T00:00:00+01:00" {
		t.Errorf("GET = %d %s", code, body)
	}
	for _, tt := range []struct {
		method, body string
		wantCode     int
		wantLimit    int64
		wantSource   string
	}{
		{"PUT", `{"daily_limit": 500}`, 200, 500, "override"},
		{"PUT", `{"daily_limit": 0}`, 200, 0, "override"},
		{"PUT", `{"daily_limit": null}`, 200, 200, "file"},
		{"PUT", `{"daily_limit": 7}`, 200, 7, "override"},
		{"DELETE", ``, 200, 200, "file"},
	} {
		code, body := a.do(t, tt.method, "/quota/acme", tt.body, "k")
		if st := status(body); code != tt.wantCode || st.Limit != tt.wantLimit || st.LimitSource != tt.wantSource {
			t.Errorf("%s %s = %d %s, want limit %d from %s", tt.method, tt.body, code, body, tt.wantLimit, tt.wantSource)
		}
	}
	for _, tt := range []struct {
		method, path, body string
		wantCode           int
	}{
		{"PUT", "/quota/acme", `{"daily_limit": -1}`, 400},
		{"PUT", "/quota/acme", `{"daily_limit": 2000000000}`, 400},
		{"PUT", "/quota/acme", `{"daily_limit": "9"}`, 400},
		{"PUT", "/quota/acme", `{"daily_limit": 1.5}`, 400},
		{"PUT", "/quota/acme", `{"limit": 5}`, 400},
		{"PUT", "/quota/acme", `{}`, 400},
		{"PUT", "/quota/acme", `not json`, 400},
		{"GET", "/quota/globex", ``, 404},
		{"PUT", "/quota/globex", `{"daily_limit": 5}`, 404},
		{"POST", "/quota/acme", `{"daily_limit": 5}`, 405},
	} {
		if code, body := a.do(t, tt.method, tt.path, tt.body, "k"); code != tt.wantCode || !strings.Contains(body, "error") && code != 405 {
			t.Errorf("%s %s %s = %d %s, want %d with an error", tt.method, tt.path, tt.body, code, body, tt.wantCode)
		}
	}
	if v := e.rdb.Get(t.Context(), OverrideKey("acme")).Val(); v != "" {
		t.Errorf("override after the failed requests = %q, want none", v)
	}
}
