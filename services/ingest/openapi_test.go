package ingest_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/chattermail/chattermail/services/ingest"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	legacyrouter "github.com/getkin/kin-openapi/routers/legacy"
)

func init() {
	// The unsubscribe pages are HTML; their schema is a plain string.
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
}

// apiSpec is openapi.yaml, loaded and validated once per test that
// needs it.
func apiSpec(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(ingest.OpenAPI)
	if err != nil {
		t.Fatalf("openapi.yaml does not load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not valid OpenAPI 3: %v", err)
	}
	return doc
}

// apiChecker sends requests to the real handlers and checks every answer
// (and every request expected to succeed) against openapi.yaml. It
// records which operation answered which status.
type apiChecker struct {
	t      *testing.T
	doc    *openapi3.T
	router routers.Router
	base   string
	client *http.Client

	mu   sync.Mutex
	seen map[string]map[int]bool // operation id -> statuses answered
}

func newAPIChecker(t *testing.T, base string, client *http.Client) *apiChecker {
	t.Helper()
	doc := apiSpec(t)
	doc.Servers = nil // match paths on any host
	r, err := legacyrouter.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &apiChecker{t: t, doc: doc, router: r, base: base, client: client, seen: map[string]map[int]bool{}}
}

// call is one request to the API.
type call struct {
	method, path string
	// key is the bearer API key; none when empty.
	key  string
	body string
	// header holds extra header fields as name, value pairs.
	header []string
	// raw, when set, is sent instead of body (to hide the length).
	raw io.Reader
}

// answer is the API's answer to a call.
type answer struct {
	status int
	header http.Header
	body   string
}

// do sends c, checks the answer against the description, and returns it.
// A request answered 2xx must itself conform to the description.
func (a *apiChecker) do(c call) answer {
	a.t.Helper()
	var body io.Reader = strings.NewReader(c.body)
	if c.raw != nil {
		body = c.raw
	}
	req, err := http.NewRequest(c.method, a.base+c.path, body)
	if err != nil {
		a.t.Fatal(err)
	}
	if c.body != "" || c.raw != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	for i := 0; i+1 < len(c.header); i += 2 {
		req.Header.Set(c.header[i], c.header[i+1])
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	ans := answer{status: resp.StatusCode, header: resp.Header, body: string(rb)}

	if resp.StatusCode == http.StatusMethodNotAllowed {
		// Every path answers 405 for a method it does not have; the
		// description lists the methods a path has.
		if resp.Header.Get("Allow") == "" || !strings.Contains(ans.body, `"error"`) {
			a.t.Errorf("%s %s = 405 without Allow or JSON error", c.method, c.path)
		}
		return ans
	}
	// Route the request again, with a fresh body, for the validator. The
	// router matches decoded paths, where an escaped '/' inside a model
	// or thread id would split a segment: route with it replaced.
	vreq, _ := http.NewRequest(c.method, a.base+c.path, strings.NewReader(c.body))
	vreq.Header = req.Header.Clone()
	routed := vreq.Clone(context.Background())
	routed.URL.Path = strings.ReplaceAll(routed.URL.EscapedPath(), "%2F", "_")
	routed.URL.RawPath = ""
	route, params, err := a.router.FindRoute(routed)
	if err != nil {
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			a.t.Errorf("%s %s answered %d but openapi.yaml has no such operation: %v", c.method, c.path, resp.StatusCode, err)
		}
		return ans
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}}
	if resp.StatusCode < 300 && c.raw == nil {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			a.t.Errorf("%s %s succeeded (%d) with a request openapi.yaml refuses: %v", c.method, c.path, resp.StatusCode, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{MultiError: true, IncludeResponseStatus: true}}
	out.SetBodyBytes(rb)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		a.t.Errorf("%s %s = %d %s: the answer does not match openapi.yaml: %v", c.method, c.path, resp.StatusCode, bytes.TrimSpace(rb), err)
	}
	a.mu.Lock()
	op := route.Operation.OperationID
	if a.seen[op] == nil {
		a.seen[op] = map[int]bool{}
	}
	a.seen[op][resp.StatusCode] = true
	a.mu.Unlock()
	return ans
}

// expect sends c and fails the test unless the answer has status want
// and, when wantBody is not empty, a body containing it.
func (a *apiChecker) expect(c call, want int, wantBody string) answer {
	a.t.Helper()
	ans := a.do(c)
	if ans.status != want || !strings.Contains(ans.body, wantBody) {
		a.t.Errorf("%s %s = %d %s, want %d with %q", c.method, c.path, ans.status, strings.TrimSpace(ans.body), want, wantBody)
	}
	return ans
}

// checkCoverage fails the test for every operation, and every status
// documented for it, that no request exercised, except the statuses in
// untested ("operationId status", or "* status" for every operation).
func (a *apiChecker) checkCoverage(untested ...string) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var missing []string
	for path, item := range a.doc.Paths.Map() {
		for method, op := range item.Operations() {
			for code := range op.Responses.Map() {
				if slices.Contains(untested, op.OperationID+" "+code) || slices.Contains(untested, "* "+code) {
					continue
				}
				var status int
				_, _ = fmt.Sscan(code, &status)
				if !a.seen[op.OperationID][status] {
					missing = append(missing, fmt.Sprintf("%s %s (%s) %s", method, path, op.OperationID, code))
				}
			}
		}
	}
	slices.Sort(missing)
	for _, m := range missing {
		a.t.Errorf("no test exercised %s", m)
	}
}
