// Package kvkey builds the JetStream KV keys of ingest's buckets and
// normalises the email addresses they are keyed by.
//
// A KV key is a NATS subject made of tokens of [-/_=.a-zA-Z0-9] separated
// by dots (ADR-8). Free text (a thread's model and id, an address, a
// Message-ID) never goes into a key as is: it is hashed into one token of
// [a-z2-7], so every key has a fixed shape and a key can be listed by
// tenant with the filter "<tenant>.>".
package kvkey

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/mail"
	"strings"
)

// encoding is lower-case base32 without padding: [a-z2-7].
var encoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Encode renders b as lower-case base32 without padding.
func Encode(b []byte) string { return strings.ToLower(encoding.EncodeToString(b)) }

// Token returns one key token standing for the parts: the first 20 bytes
// of SHA-256 over the parts joined by NUL, 32 characters of [a-z2-7].
// Distinct parts give distinct tokens for every practical purpose, as
// long as no part holds a NUL (validated input never does).
func Token(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return Encode(sum[:20])
}

// Short returns a short token for s: 10 bytes of SHA-256, 16 characters
// of [a-z2-7]. It names a recipient inside a mail id.
func Short(s string) string {
	sum := sha256.Sum256([]byte(s))
	return Encode(sum[:10])
}

// NormalizeAddress checks that s is exactly one plain address (an
// addr-spec such as bob@example.com, without display name, CR, LF or NUL)
// and returns its matching form (mail-rules §2): the domain lower-cased,
// the local part lower-cased only when it is ASCII. The normalised form is
// for comparing addresses; mail still goes to the address as written.
func NormalizeAddress(s string) (string, error) {
	if s == "" {
		return "", errors.New("is required")
	}
	if strings.ContainsAny(s, "\r\n\x00") {
		return "", errors.New("must not contain CR, LF or NUL")
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", fmt.Errorf("%q is not exactly one email address: %v", s, err)
	}
	if a.Name != "" || a.Address != s {
		return "", fmt.Errorf("%q must be exactly one plain address like name@example.com, without display name", s)
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 {
		return "", fmt.Errorf("%q is not exactly one email address", s)
	}
	local, domain := s[:at], strings.ToLower(s[at+1:])
	if isASCII(local) {
		local = strings.ToLower(local)
	}
	return local + "@" + domain, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
