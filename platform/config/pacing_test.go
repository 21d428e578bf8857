package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParsePacing(t *testing.T) {
	c, err := Parse([]byte(`
pacing:
  - {domain: Outlook.COM, per_minute: 600, burst: 20}
tenants:
  acme:
    alias_domain: example.com
    pacing:
      - {domain: gmail.com, per_minute: 60}
`), "")
	if err != nil {
		t.Fatal(err)
	}
	want := []Pacing{{Domain: "outlook.com", PerMinute: 600, Burst: 20}}
	if len(c.Pacing) != 1 || c.Pacing[0] != want[0] {
		t.Errorf("Pacing = %+v, want %+v", c.Pacing, want)
	}
	tp := c.Tenant("acme").Pacing
	if len(tp) != 1 || tp[0] != (Pacing{Domain: "gmail.com", PerMinute: 60, Burst: 1}) {
		t.Errorf("acme Pacing = %+v, want gmail.com at 60 a minute with the default burst 1", tp)
	}
	if got := tp[0].Interval(); got != time.Second {
		t.Errorf("Interval() = %s, want 1s", got)
	}
}

func TestParsePacingRejectsInvalid(t *testing.T) {
	const tenant = "tenants:\n  acme:\n    alias_domain: example.com\n"
	tests := []struct{ doc, want string }{
		{tenant + "    pacing: [{per_minute: 60}]", `tenant "acme": pacing[0].domain is required`},
		{tenant + "    pacing: [{domain: gmail.com}]", "pacing[0].per_minute 0 must be positive"},
		{tenant + "    pacing: [{domain: gmail.com, per_minute: -5}]", "pacing[0].per_minute -5 must be positive"},
		{tenant + "    pacing: [{domain: gmail.com, per_minute: 60, burst: -1}]", "pacing[0].burst -1"},
		{tenant + "    pacing: [{domain: gmail.com, per_minute: 60}, {domain: GMAIL.com, per_minute: 5}]", `pacing[1].domain "gmail.com" has a rule already`},
		{tenant + "    pacing: [{domain: gmail.com, per_minute: 60, rate: 5}]", "rate"},
		{tenant + "pacing: [{domain: 'bad domain', per_minute: 60}]", `pacing[0].domain "bad domain" must be an ASCII domain name`},
		{tenant + "pacing: [{domain: x.org, per_minute: 100000000}]", "pacing[0].per_minute 100000000 must be at most"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc), "")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid mentioning %q", tt.doc, err, tt.want)
		}
	}
}
