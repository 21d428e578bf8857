package domains

import "testing"

func TestOrganizationalAndAligned(t *testing.T) {
	orgs := map[string]string{
		"mail.example.com": "example.com", "Example.COM.": "example.com",
		"a.b.example.co.uk": "example.co.uk", "co.uk": "co.uk",
	}
	for in, want := range orgs {
		if got := Organizational(in); got != want {
			t.Errorf("Organizational(%q) = %q, want %q", in, got, want)
		}
	}
	aligned := []struct {
		d, from string
		strict  bool
		want    bool
	}{
		{"mail.example.com", "example.com", false, true},
		{"mail.example.com", "example.com", true, false},
		{"example.com", "EXAMPLE.com", true, true},
		{"a.co.uk", "b.co.uk", false, false},
	}
	for _, tt := range aligned {
		if got := Aligned(tt.d, tt.from, tt.strict); got != tt.want {
			t.Errorf("Aligned(%q, %q, %v) = %v, want %v", tt.d, tt.from, tt.strict, got, tt.want)
		}
	}
	if got := Of("Bob@Example.COM"); got != "example.com" {
		t.Errorf("Of(Bob@Example.COM) = %q, want example.com", got)
	}
}
