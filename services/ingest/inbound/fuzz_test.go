package inbound_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/inbound"
	"google.golang.org/protobuf/proto"
)

// FuzzClassify runs the inbound parse-and-route path (headers, MIME,
// DSN, quote stripping, routing) on arbitrary messages: it must never
// panic, and a reply it routes must make a post that marshals (valid
// UTF-8) with a one-line subject. The corpus of testdata/inbound is the
// seed, so "go test" runs it as a normal test.
func FuzzClassify(f *testing.F) {
	keys, reply, bounce := tokens(f)
	files, _ := filepath.Glob("../testdata/inbound/*/*.eml")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(strings.NewReplacer("{{reply}}", reply, "{{bounce}}", bounce).Replace(string(b)), true)
	}
	f.Add("From: a@b\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n\r\n--x", false)
	f.Add("Subject: =?utf-8?b?/w==?=\r\nReferences: <"+parentID+">\r\n\r\n\xff", false)
	r, err := inbound.NewRouter(inbound.RouterOptions{Config: testConfig(f), Tokens: keys, Index: fakeIndex{}, Threads: fakeThreads{}, Log: discard()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string, useToken bool) {
		in := &cmv1.InboundMail{Tenant: "acme", InboundId: "fuzz", MailFrom: "ann@customer.example", RcptTo: []string{"catchall@example.com"}}
		if useToken {
			in.RcptTo = []string{"reply+" + reply + "@example.com"}
		}
		d, err := r.Classify(context.Background(), in, []byte(raw))
		if err != nil {
			t.Fatalf("Classify: %v", err)
		}
		if d.Kind != "reply" {
			return
		}
		p := &cmv1.ChatterPost{Tenant: "acme", Thread: d.Thread, Author: d.Author, Subject: d.Subject, BodyText: d.Text, BodyHtml: d.HTML}
		if _, err := proto.Marshal(p); err != nil {
			t.Fatalf("post does not marshal: %v", err)
		}
		if strings.ContainsAny(d.Subject, "\r\n") || !utf8.ValidString(d.Text) || strings.ContainsRune(d.Text, 0) {
			t.Fatalf("subject %q / text %q unsafe", d.Subject, d.Text)
		}
	})
}
