package rewrite

import (
	"errors"
	"testing"

	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

func TestFormatAddress(t *testing.T) {
	tests := []struct{ name, addr, want string }{
		{"Bob", "n@example.com", `"Bob" <n@example.com>`},
		{"", "n@example.com", "n@example.com"},
		{`Bob "The Builder" \o/`, "n@example.com", `"Bob \"The Builder\" \\o/" <n@example.com>`},
		{"Jérôme", "n@example.com", "=?utf-8?q?J=C3=A9r=C3=B4me?= <n@example.com>"},
	}
	for _, tt := range tests {
		if got := FormatAddress(tt.name, tt.addr); got != tt.want {
			t.Errorf("FormatAddress(%q, %q) = %s, want %s", tt.name, tt.addr, got, tt.want)
		}
	}
}

func tenant(t *testing.T) *config.Tenant {
	t.Helper()
	c, err := config.Parse([]byte("tenants:\n  acme:\n    alias_domain: example.com\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	return c.Tenant("acme")
}

func TestApplySendsAsNotificationAddress(t *testing.T) {
	tests := []struct {
		author     *cmv1.Partner
		wantHeader string
		wantEncap  bool
	}{
		{&cmv1.Partner{Name: "Alice", Email: "alice@gmail.com"}, `"Alice" <notifications@example.com>`, true},
		{&cmv1.Partner{Email: "jane.doe@gmail.com"}, `"jane.doe" <notifications@example.com>`, true},
		{&cmv1.Partner{Email: "notifications@example.com"}, `"notifications" <notifications@example.com>`, false},
	}
	for _, tt := range tests {
		m := &cmv1.OutboundMail{Author: tt.author, Recipient: &cmv1.Partner{Email: "ann@example.org"}}
		if err := Apply(tenant(t), m); err != nil {
			t.Fatalf("Apply(%s) = %v", tt.author.GetEmail(), err)
		}
		if got := m.GetFrom().GetHeader(); got != tt.wantHeader {
			t.Errorf("Apply(%s) From = %s, want %s", tt.author.GetEmail(), got, tt.wantHeader)
		}
		if got := m.GetFrom().GetEncapsulated(); got != tt.wantEncap {
			t.Errorf("Apply(%s) encapsulated = %v, want %v", tt.author.GetEmail(), got, tt.wantEncap)
		}
		if got := m.GetEnvelope().GetMailFrom(); got != "bounce@example.com" {
			t.Errorf("Apply(%s) envelope = %s, want bounce@example.com", tt.author.GetEmail(), got)
		}
		if got := m.GetEnvelope().GetRcptTo(); got != "ann@example.org" {
			t.Errorf("Apply(%s) rcpt = %s, want ann@example.org", tt.author.GetEmail(), got)
		}
		if m.GetReplyTo() != "catchall@example.com" {
			t.Errorf("Apply(%s) Reply-To = %s, want catchall@example.com", tt.author.GetEmail(), m.GetReplyTo())
		}
		hdr := map[string]string{}
		for _, h := range m.GetHeaders() {
			hdr[h.GetName()] = h.GetValue()
		}
		if hdr["Auto-Submitted"] != "auto-generated" || hdr["X-Auto-Response-Suppress"] != "All" {
			t.Errorf("Apply(%s) headers = %v, want Auto-Submitted and X-Auto-Response-Suppress", tt.author.GetEmail(), hdr)
		}
	}
}

func TestApplyRejectsInvalidAuthor(t *testing.T) {
	for _, email := range []string{"", "a@b.com\r\nBcc: x@y.com", "a@b.com, c@d.com", "a\x00@b.com"} {
		m := &cmv1.OutboundMail{Author: &cmv1.Partner{Email: email}}
		if err := Apply(tenant(t), m); !errors.Is(err, ErrInvalidAuthor) {
			t.Errorf("Apply(author %q) = %v, want ErrInvalidAuthor", email, err)
		}
	}
}
