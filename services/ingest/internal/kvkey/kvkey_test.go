package kvkey

import (
	"regexp"
	"testing"
)

func TestToken(t *testing.T) {
	token := regexp.MustCompile(`^[a-z2-7]{32}$`)
	tests := [][]string{{"a", "b"}, {"ab"}, {"a.b"}, {"crm.lead", "42"}, {"crm", "lead.42"}, {"*", ">"}}
	seen := map[string][]string{}
	for _, parts := range tests {
		got := Token(parts...)
		if !token.MatchString(got) {
			t.Errorf("Token(%q) = %q, want 32 characters of [a-z2-7]", parts, got)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("Token(%q) = Token(%q) = %q", parts, other, got)
		}
		seen[got] = parts
	}
	if got := Short("x"); len(got) != 16 || !regexp.MustCompile(`^[a-z2-7]+$`).MatchString(got) {
		t.Errorf("Short(x) = %q, want 16 characters of [a-z2-7]", got)
	}
}
