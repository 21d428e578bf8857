package inbound_test

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/replytoken"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/inbound"
	"github.com/chattermail/chattermail/services/ingest/msgindex"
	"github.com/chattermail/chattermail/services/ingest/threads"
)

var update = flag.Bool("update", false, "rewrite the .route golden files of testdata/inbound")

const (
	parentID   = "p1aaaaaaaaaaaaaaaaaaaaaaaa@example.com"
	parentPost = "p1aaaaaaaaaaaaaaaaaaaaaaaa"
	annMail    = "p1aaaaaaaaaaaaaaaaaaaaaaaa-annhash"
)

func testConfig(t testing.TB) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte("tenants:\n  acme:\n    alias_domain: example.com\n  other:\n    alias_domain: other.example\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fakeIndex knows the parent message only.
type fakeIndex struct{}

func (fakeIndex) Lookup(_ context.Context, tenant, id string) (msgindex.Entry, error) {
	if tenant == "acme" && msgindex.Trim(id) == parentID {
		return msgindex.Entry{Tenant: "acme", MessageID: parentID, PostID: parentPost, Model: "crm.lead", ThreadID: "42", DisplayName: "Big deal"}, nil
	}
	return msgindex.Entry{}, msgindex.ErrNotFound
}

// fakeThreads has crm.lead/42 with Bob, Ann and Carl.
type fakeThreads struct{}

func (fakeThreads) Get(_ context.Context, tenant, model, id string) (*threads.Thread, error) {
	if tenant != "acme" || model != "crm.lead" || id != "42" {
		return nil, threads.ErrNotFound
	}
	th := &threads.Thread{Tenant: "acme", Model: model, ID: id, DisplayName: "Big deal"}
	for _, f := range []threads.Follower{
		{Email: "bob@example.com", Name: "Bob Seller", PartnerID: "p-bob", Internal: true, Active: true},
		{Email: "ann@customer.example", Name: "Ann Buyer", PartnerID: "p-ann", Active: true},
		{Email: "carl@partner.example", Name: "Carl Manager", PartnerID: "p-carl", Active: true},
	} {
		if _, _, err := th.Follow(f, f.Since, false); err != nil {
			return nil, err
		}
	}
	return th, nil
}

func tokens(t testing.TB) (keys *replytoken.Keys, reply, bounce string) {
	t.Helper()
	keys = replytoken.DevKeys()
	reply, err := keys.Sign(replytoken.Claims{Kind: replytoken.KindReply, Tenant: "acme", ThreadModel: "crm.lead", ThreadID: "42",
		Message: parentID, Recipient: "ann@customer.example"})
	if err != nil {
		t.Fatal(err)
	}
	bounce, err = keys.Sign(replytoken.Claims{Kind: replytoken.KindBounce, Tenant: "acme", Mail: annMail, Recipient: "ann@customer.example"})
	if err != nil {
		t.Fatal(err)
	}
	return keys, reply, bounce
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// loadCorpus reads a testdata message, fills in its tokens and builds
// the InboundMail its X-Envelope-From and X-Envelope-To lines describe.
func loadCorpus(t testing.TB, path, reply, bounce string) (*cmv1.InboundMail, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte(strings.NewReplacer("{{reply}}", reply, "{{bounce}}", bounce).Replace(string(b)))
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	in := &cmv1.InboundMail{Tenant: "acme", InboundId: "test", MailFrom: strings.Trim(m.Header.Get("X-Envelope-From"), "<>"),
		RcptTo: []string{strings.Trim(m.Header.Get("X-Envelope-To"), "<>")}}
	return in, raw
}

// TestRouteGolden classifies every message of testdata/inbound (replies,
// bounces, auto-replies) and compares with its .route file.
func TestRouteGolden(t *testing.T) {
	keys, reply, bounce := tokens(t)
	r, err := inbound.NewRouter(inbound.RouterOptions{Config: testConfig(t), Tokens: keys, Index: fakeIndex{}, Threads: fakeThreads{}, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("../testdata/inbound/*/*.eml")
	if len(files) < 18 {
		t.Fatalf("found %d corpus messages, want at least 18", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f), func(t *testing.T) {
			in, raw := loadCorpus(t, f, reply, bounce)
			d, err := r.Classify(context.Background(), in, raw)
			if err != nil {
				t.Fatal(err)
			}
			got := d.String()
			golden := strings.TrimSuffix(f, ".eml") + ".route"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("Classify(%s) =\n%s\nwant\n%s", f, got, want)
			}
		})
	}
}
