package mailgrade

import (
	"bytes"
	"context"
	"crypto"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/cmd/chattermail/domaincheck"
	"github.com/chattermail/chattermail/platform/dkimkey"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/emersion/go-msgauth/dkim"
)

const goodMessage = "From: \"Bob\" <notifications@example.com>\r\n" +
	"To: ann@customer.example\r\n" +
	"Subject: Contract signed\r\n" +
	"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n" +
	"Message-Id: <p1@example.com>\r\n" +
	"Mime-Version: 1.0\r\n" +
	"Auto-Submitted: auto-generated\r\n" +
	"List-Unsubscribe: <https://chat.example.com/v1/unsubscribe/t>\r\n" +
	"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"The customer signed.\r\n"

func sign(t *testing.T, msg string, key crypto.Signer, domain string) []byte {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(msg), &dkim.SignOptions{
		Domain: domain, Selector: "odoo", Signer: key,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-Id"},
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestGrade(t *testing.T) {
	key, err := dkimkey.Generate(dkimkey.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := dkimkey.Record(key.Public())
	srv := testenv.DNS(t, `odoo._domainkey.example.com. 300 IN TXT "`+rec+`"`)
	dns := resolver.New([]string{srv.Addr()}, 500*time.Millisecond)
	spfOK := domaincheck.Result{Status: domaincheck.OK, Detail: "v=spf1 ip4:127.0.0.1 -all"}
	spfFail := domaincheck.Result{Status: domaincheck.Fail, Detail: "no SPF record"}

	tests := []struct {
		name       string
		raw        []byte
		spf        domaincheck.Result
		wantScore  float64
		wantFailed []string
	}{
		{"signed, aligned, complete", sign(t, goodMessage, key, "example.com"), spfOK, MaxScore, nil},
		{"unsigned but SPF-aligned", []byte(goodMessage), spfOK, MaxScore - 2.5, []string{"dkim"}},
		{"unsigned, no SPF", []byte(goodMessage), spfFail, MaxScore - 2.5 - 1.5 - 2, []string{"dkim", "spf", "dmarc"}},
		{"tampered after signing", bytes.Replace(sign(t, goodMessage, key, "example.com"), []byte("Contract signed"), []byte("Contract broken"), 1), spfOK, MaxScore - 2.5, []string{"dkim"}},
		{"no List-Unsubscribe, bare LF", []byte(strings.ReplaceAll(strings.Replace(goodMessage, "List-Unsubscribe-Post", "X-Other", 1), "\r\n", "\n")), spfOK,
			MaxScore - 2.5 - 1 - 0.5, []string{"list-unsubscribe", "dkim", "lines"}},
	}
	for _, tt := range tests {
		g := Message(context.Background(), dns, Input{Raw: tt.raw, EnvelopeFrom: "bounce@example.com", SPF: tt.spf})
		var failed []string
		for _, it := range g.Items {
			if !it.Passed {
				failed = append(failed, it.Check)
			}
		}
		if g.Score != tt.wantScore || strings.Join(failed, ",") != strings.Join(sortedLike(failed, tt.wantFailed), ",") {
			t.Errorf("%s: Message() = score %.1f, failed %v; want %.1f, failed %v", tt.name, g.Score, failed, tt.wantScore, tt.wantFailed)
		}
	}
}

// sortedLike returns want when it holds the same checks as got, in got's
// order, so the comparison ignores order only.
func sortedLike(got, want []string) []string {
	if len(got) != len(want) {
		return want
	}
	seen := map[string]bool{}
	for _, w := range want {
		seen[w] = true
	}
	for _, g := range got {
		if !seen[g] {
			return want
		}
	}
	return got
}
