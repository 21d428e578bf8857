package inbound

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/dkimkey"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/emersion/go-msgauth/dkim"
)

const authReply = "From: Ann Buyer <ann@customer.example>\r\n" +
	"To: reply+token@example.com\r\n" +
	"Subject: Re: Contract signed\r\n" +
	"Message-Id: <r1@customer.example>\r\n" +
	"\r\n" +
	"Hello\r\n"

func TestAuthenticatorCheck(t *testing.T) {
	key, err := dkimkey.Generate(dkimkey.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := dkimkey.Record(key.Public())
	srv := testenv.DNS(t,
		`customer.example. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.customer.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`sel._domainkey.customer.example. 300 IN TXT "`+rec+`"`,
		`other.example. 300 IN TXT "v=spf1 -all"`,
	)
	srv.Fail("_dmarc.broken.example")
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, strings.NewReader(authReply), &dkim.SignOptions{Domain: "customer.example", Selector: "sel", Signer: key,
		HeaderKeys: []string{"From", "To", "Subject", "Message-Id"}}); err != nil {
		t.Fatal(err)
	}
	au := &Authenticator{DNS: resolver.New([]string{srv.Addr()}, 500*time.Millisecond), ServID: "mx.example.com"}
	tests := []struct {
		name          string
		raw           string
		ip, mailFrom  string
		wantDMARC     string
		wantSender    string
		wantInResults []string
	}{
		{"SPF and DKIM pass", signed.String(), "127.0.0.1", "ann@customer.example", "pass", "ann@customer.example",
			[]string{"mx.example.com", "spf=pass", "dkim=pass", "header.d=customer.example", "dmarc=pass", "header.from=customer.example"}},
		{"DKIM only, from another host", signed.String(), "10.1.2.3", "ann@customer.example", "pass", "ann@customer.example",
			[]string{"spf=fail", "dkim=pass", "dmarc=pass"}},
		{"unsigned, from another host", authReply, "10.1.2.3", "ann@customer.example", "fail", "",
			[]string{"spf=fail", "dkim=none", "dmarc=fail"}},
		{"SPF passes for an unaligned envelope", authReply, "127.0.0.1", "bounces@other.example", "fail", "",
			[]string{"dmarc=fail"}},
		{"tampered signature", strings.Replace(signed.String(), "Hello", "Goodbye", 1), "10.1.2.3", "ann@customer.example", "fail", "",
			[]string{"dkim=fail", "dmarc=fail"}},
		{"no DMARC record", strings.ReplaceAll(authReply, "customer.example", "nopolicy.example"), "10.1.2.3", "x@nopolicy.example", "none", "",
			[]string{"dmarc=none"}},
		{"DMARC lookup fails", strings.ReplaceAll(authReply, "customer.example", "broken.example"), "10.1.2.3", "x@broken.example", "temperror", "",
			[]string{"dmarc=temperror"}},
	}
	for _, tt := range tests {
		a := au.Check(context.Background(), []byte(tt.raw), net.ParseIP(tt.ip), "mail.customer.example", tt.mailFrom)
		if a.DMARC != tt.wantDMARC || a.AuthenticatedSender() != tt.wantSender {
			t.Errorf("%s: Check() = dmarc %s, sender %q; want %s, %q (%s)", tt.name, a.DMARC, a.AuthenticatedSender(), tt.wantDMARC, tt.wantSender, a.Results)
		}
		for _, want := range tt.wantInResults {
			if !strings.Contains(a.Results, want) {
				t.Errorf("%s: Authentication-Results %q lacks %q", tt.name, a.Results, want)
			}
		}
	}
}

func TestAuthMismatch(t *testing.T) {
	pass := &Authentication{DMARC: "pass", From: "ann@customer.example"}
	fail := &Authentication{DMARC: "fail", From: "ann@customer.example"}
	none := &Authentication{DMARC: "none", From: "ann@customer.example"}
	tests := []struct {
		name  string
		token string
		a     *Authentication
		want  string // substring; "" means no mismatch
	}{
		{"authenticated as the token's recipient", "ann@customer.example", pass, ""},
		{"authenticated as someone else", "carl@example.com", pass, "authenticated as ann@customer.example"},
		{"token, but no authentication", "ann@customer.example", none, "did not authenticate"},
		{"no token, DMARC fails", "", fail, "failed DMARC"},
		{"no token, no policy", "", none, ""},
	}
	for _, tt := range tests {
		got := authMismatch(&Decision{TokenRecipient: tt.token}, tt.a)
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("%s: authMismatch() = %q, want %q", tt.name, got, tt.want)
		}
	}
}
