package rewrite

import (
	"context"
	"net/mail"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/replytoken"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// rejectAll answers p=reject for every domain, so that fuzzed authors go
// through mitigation as well as through the plain rules.
type rejectAll struct{}

func (rejectAll) Policy(_ context.Context, d string) (DMARCPolicy, error) {
	return DMARCPolicy{Domain: d, Record: "_dmarc." + d, Policy: PolicyReject, Percent: 100}, nil
}

// FuzzIdentity feeds arbitrary author names and addresses to address
// normalisation, the rules and Apply: nothing panics, and no header value
// or envelope address that comes out ever holds CR or LF. The seed corpus
// runs as a normal test; "go test -fuzz FuzzIdentity" explores further.
func FuzzIdentity(f *testing.F) {
	for _, ex := range Examples {
		f.Add("", ex.Author)
	}
	for _, seed := range [][2]string{
		{"Bob", "bob@example.com"},
		{"", `"fake@x.com" <a@y.com>`},
		{"", "a@b.com, c@d.com"},
		{"", "a@b.com\r\nBcc: x@y.com"},
		{"Bob\r\nBcc: x@y.com", "bob@example.com"},
		{"", "=?utf-8?q?Bob=0D=0ABcc:_x?= <a@b.com>"},
		{"Jérôme \"JJ\" \\o/", "jérôme@éxample.com"},
		{"", `"a b"@example.com`},
		{"", `"a\"b" <"x y"@exämple.org>`},
		{"\x01\x7f\t", "a@b"},
		{"", "<@>"},
		{"", "a@xn--zz"},
		{strings.Repeat("é", 300), "a@b.com"},
	} {
		f.Add(seed[0], seed[1])
	}
	ctx := context.Background()
	var rules []*Rules
	for _, body := range []string{
		base,
		base + "    servers: [{name: S1, host: h, from_filter: example.com}]\n",
		base + "    servers: [{name: S0, host: h}]\n",
		base + "    default_from: noreply@other.org\n    servers: [{name: S3, host: h, from_filter: 'a.com, b@c.com'}]\n",
	} {
		rules = append(rules, compile(f, tenantFrom(f, body)))
	}
	rules = append(rules, compile(f, &config.Tenant{ID: "acme", Servers: []*config.Server{{Name: "S0", Host: "h"}}}))
	cfg, err := config.Parse([]byte("tenants:\n  acme:\n"+base+"    servers: [{name: S0, host: h}]\n"), "")
	if err != nil {
		f.Fatal(err)
	}
	rw, err := NewRewriter(cfg, rejectAll{}, replytoken.DevKeys())
	if err != nil {
		f.Fatal(err)
	}
	noCRLF := func(t *testing.T, what, v string) {
		if strings.ContainsAny(v, "\r\n") {
			t.Fatalf("%s = %q holds CR or LF", what, v)
		}
	}

	f.Fuzz(func(t *testing.T, name, email string) {
		if norm, err := NormalizeAddress(email); err == nil {
			noCRLF(t, "NormalizeAddress", norm)
			if !strings.Contains(norm, "@") {
				t.Fatalf("NormalizeAddress(%q) = %q, want an address", email, norm)
			}
		}
		if wire, err := WireAddress(email); err == nil {
			noCRLF(t, "WireAddress", wire)
		}
		noCRLF(t, "FormatAddress", FormatAddress(name, "n@example.com"))

		a, err := ParseAuthor(name, email)
		if err != nil {
			return
		}
		for _, r := range rules {
			for _, dm := range []PolicySource{nil, rejectAll{}} {
				d, err := r.Decide(ctx, a, dm, DNSFailureError)
				if err != nil {
					continue
				}
				noCRLF(t, "From", d.From.GetHeader())
				noCRLF(t, "envelope", d.EnvelopeFrom)
				noCRLF(t, "reason", d.From.GetReason())
				if _, err := mail.ParseAddress(d.From.GetHeader()); err != nil {
					t.Fatalf("From %q (author %q, %q) does not parse: %v", d.From.GetHeader(), name, email, err)
				}
			}
		}
		m := &cmv1.OutboundMail{MailId: "m1", Tenant: "acme", PostId: "p1", MessageId: "p1@example.com",
			Thread: &cmv1.ThreadRef{Model: "crm.lead", Id: "42"}, Author: &cmv1.Partner{Name: name, Email: email},
			Recipient: &cmv1.Partner{Email: "ann@customer.example"}}
		if err := rw.Apply(ctx, m, DNSFailureError); err != nil {
			return
		}
		noCRLF(t, "From", m.GetFrom().GetHeader())
		noCRLF(t, "Reply-To", m.GetReplyTo())
		noCRLF(t, "MAIL FROM", m.GetEnvelope().GetMailFrom())
		noCRLF(t, "RCPT TO", m.GetEnvelope().GetRcptTo())
		for _, h := range m.GetHeaders() {
			noCRLF(t, h.GetName(), h.GetValue())
		}
	})
}
