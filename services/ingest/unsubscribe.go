package ingest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"os"
	"regexp"
	"strings"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/threads"
)

// One-click unsubscribe (RFC 8058, RFC 2369 List-Unsubscribe, RFC 2919
// List-Id). Every email carries
//
//	List-Id: "crm.lead" <crm.lead.example.com>
//	List-Unsubscribe: <https://chattermail.example.com/v1/unsubscribe/TOKEN>
//	List-Unsubscribe-Post: List-Unsubscribe=One-Click
//
// where TOKEN names tenant, thread and recipient and is signed with
// HMAC-SHA256 under the unsubscribe key. A POST to the URL (what a mail
// provider's "unsubscribe" button sends, RFC 8058 §3.2) unfollows the
// recipient from the thread; a GET (a person following the link) only
// shows a page with a button that POSTs, so that link scanners which
// fetch every URL in a mail unsubscribe nobody.

// MinUnsubscribeKeyLen is the shortest unsubscribe key accepted, in bytes.
const MinUnsubscribeKeyLen = 32

// DevUnsubscribeKey signs unsubscribe links when no key is configured. It
// is public: anyone can forge links signed with it. New logs a warning
// when it is used.
var DevUnsubscribeKey = []byte("chattermail development unsubscribe key: NOT SECRET, do not use in production")

// ErrBadUnsubscribeToken is returned for a token that is malformed or not
// signed with the key.
var ErrBadUnsubscribeToken = errors.New("ingest: invalid unsubscribe token")

// LoadUnsubscribeKey reads the unsubscribe key from the file at path
// (UNSUBSCRIBE_KEY_FILE): its content with surrounding white space
// trimmed, at least MinUnsubscribeKeyLen bytes. Make one with
// "head -c 32 /dev/urandom | base64". An empty path returns nil, which
// makes New fall back to DevUnsubscribeKey with a warning.
func LoadUnsubscribeKey(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ingest: unsubscribe key: %w", err)
	}
	key := []byte(strings.TrimSpace(string(b)))
	if len(key) < MinUnsubscribeKeyLen {
		return nil, fmt.Errorf("ingest: unsubscribe key in %s is %d bytes, want at least %d", path, len(key), MinUnsubscribeKeyLen)
	}
	return key, nil
}

// Unsubscription is what an unsubscribe token names.
type Unsubscription struct {
	Tenant string
	// Model and ThreadID name the thread.
	Model, ThreadID string
	// Address is the recipient's normalised address.
	Address string
}

const unsubscribeVersion = "u1"

// unsubscribeMAC is HMAC-SHA256(key, domain-separated payload) cut to 16
// bytes.
func unsubscribeMAC(key []byte, payload string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("chattermail-unsubscribe\x00"))
	m.Write([]byte(payload))
	return m.Sum(nil)[:16]
}

// UnsubscribeToken returns the signed token of u: the base64url payload
// (version, tenant, model, thread id and address, NUL-separated), a dot
// and the base64url MAC. It is made of [A-Za-z0-9_.-], safe in a URL path.
func UnsubscribeToken(key []byte, u Unsubscription) string {
	payload := strings.Join([]string{unsubscribeVersion, u.Tenant, u.Model, u.ThreadID, u.Address}, "\x00")
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(unsubscribeMAC(key, payload))
}

// ParseUnsubscribeToken checks token's signature under key and returns
// what it names, or ErrBadUnsubscribeToken.
func ParseUnsubscribeToken(key []byte, token string) (Unsubscription, error) {
	enc := base64.RawURLEncoding
	p64, m64, ok := strings.Cut(token, ".")
	if !ok || len(token) > 4096 {
		return Unsubscription{}, ErrBadUnsubscribeToken
	}
	payload, err1 := enc.DecodeString(p64)
	mac, err2 := enc.DecodeString(m64)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, unsubscribeMAC(key, string(payload))) {
		return Unsubscription{}, ErrBadUnsubscribeToken
	}
	parts := strings.Split(string(payload), "\x00")
	if len(parts) != 5 || parts[0] != unsubscribeVersion {
		return Unsubscription{}, ErrBadUnsubscribeToken
	}
	return Unsubscription{Tenant: parts[1], Model: parts[2], ThreadID: parts[3], Address: parts[4]}, nil
}

// UnsubscribeURL is the one-click link of u under publicURL (no trailing
// slash): publicURL + "/v1/unsubscribe/" + token.
func UnsubscribeURL(publicURL string, key []byte, u Unsubscription) string {
	return strings.TrimRight(publicURL, "/") + "/v1/unsubscribe/" + UnsubscribeToken(key, u)
}

var listLabelRE = regexp.MustCompile(`[^a-z0-9-]+`)

// ListID returns the List-Id field value of a thread of model on a
// tenant's alias domain (RFC 2919): the model as phrase and, as list-id,
// the model lower-cased with every run of other characters than a-z, 0-9
// and '-' turned into a dot, then the alias domain:
// ListID("crm.lead", "example.com") is `"crm.lead" <crm.lead.example.com>`.
func ListID(model, aliasDomain string) string {
	label := strings.Trim(listLabelRE.ReplaceAllString(strings.ToLower(model), "."), ".")
	if label == "" {
		label = "thread"
	}
	if len(label) > 200 {
		label = strings.Trim(label[:200], ".")
	}
	phrase := ""
	if isPrintableASCII(model) {
		phrase = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(model) + `" `
	}
	return phrase + "<" + label + "." + aliasDomain + ">"
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return s != ""
}

// listHeaders are the RFC 2919, 2369 and 8058 fields of one recipient's
// copy of a post.
func (s *Service) listHeaders(tenant, aliasDomain string, th *cmv1.ThreadRef, addr string) []*cmv1.Header {
	link := UnsubscribeURL(s.o.PublicURL, s.o.UnsubscribeKey, Unsubscription{Tenant: tenant, Model: th.GetModel(), ThreadID: th.GetId(), Address: addr})
	return []*cmv1.Header{
		{Name: "List-Id", Value: ListID(th.GetModel(), aliasDomain)},
		{Name: "List-Unsubscribe", Value: "<" + link + ">"},
		{Name: "List-Unsubscribe-Post", Value: "List-Unsubscribe=One-Click"},
	}
}

var unsubscribePage = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>{{.Title}}</title></head>
<body><h1>{{.Title}}</h1><p>{{.Text}}</p>
{{if .Form}}<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click"><button type="submit">Unsubscribe</button></form>{{end}}
</body></html>
`))

type pageData struct {
	Title, Text string
	Form        bool
}

func writePage(w http.ResponseWriter, status int, d pageData) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_ = unsubscribePage.Execute(w, d)
}

// serveUnsubscribe answers GET (a confirmation page) and POST (the
// one-click unfollow) on /v1/unsubscribe/{token}. No API key: the token
// is the credential.
func (s *Service) serveUnsubscribe(w http.ResponseWriter, r *http.Request) {
	u, err := ParseUnsubscribeToken(s.o.UnsubscribeKey, r.PathValue("token"))
	if err == nil && s.o.Config.Tenant(u.Tenant) == nil {
		err = ErrBadUnsubscribeToken
	}
	if err != nil {
		writePage(w, http.StatusNotFound, pageData{Title: "Link not valid", Text: "This unsubscribe link is not valid. Copy the whole link from the email."})
		return
	}
	what := u.Model + " " + u.ThreadID
	if r.Method == http.MethodGet {
		writePage(w, http.StatusOK, pageData{Title: "Unsubscribe", Form: true,
			Text: "Stop receiving emails about " + what + " at " + u.Address + "?"})
		return
	}
	// POST: RFC 8058 §3.2 one-click, or the page's button. The body is
	// "List-Unsubscribe=One-Click"; it is read (bounded) but not required,
	// so that any POST of a valid link unsubscribes.
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	_ = r.ParseForm()
	_, err = s.threads.Update(r.Context(), u.Tenant, u.Model, u.ThreadID, func(t *threads.Thread) error {
		if !t.Unsubscribe(u.Address, s.o.Now()) {
			return threads.ErrNoChange
		}
		return nil
	})
	if err != nil {
		s.o.Log.Warn("unsubscribe failed", "tenant", u.Tenant, "err", err)
		writePage(w, http.StatusServiceUnavailable, pageData{Title: "Try again", Text: "We could not record your request right now. Please try again in a minute."})
		return
	}
	s.o.Log.Info("unsubscribed by link", "tenant", u.Tenant, "thread", u.Model+"/"+u.ThreadID)
	writePage(w, http.StatusOK, pageData{Title: "Unsubscribed", Text: "You will no longer receive emails about " + what + " at " + u.Address + "."})
}
