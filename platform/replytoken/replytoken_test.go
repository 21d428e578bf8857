package replytoken

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func keys(t testing.TB, ks ...Key) *Keys {
	t.Helper()
	k, err := NewKeys(ks...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var (
	k1 = Key{ID: "k1", Secret: bytes.Repeat([]byte{1}, 32)}
	k2 = Key{ID: "k2", Secret: bytes.Repeat([]byte{2}, 32)}
)

// Ids as ingest makes them: a post id is 16 bytes, a mail id adds 10, in
// lower-case base32.
var (
	postID = enc.EncodeToString(bytes.Repeat([]byte{0xa7}, 16))
	mailID = postID + "-" + enc.EncodeToString(bytes.Repeat([]byte{0x3c}, 10))
)

var sampleReply = Claims{Kind: KindReply, Tenant: "acme", ThreadModel: "crm.lead", ThreadID: "42",
	Message: postID + "@example.com", Recipient: "ann@customer.example"}

var sampleBounce = Claims{Kind: KindBounce, Tenant: "acme", Mail: mailID, Recipient: "ann@customer.example"}

var tokenRE = regexp.MustCompile(`^[a-z2-7]+$`)

func TestRoundTrip(t *testing.T) {
	k := keys(t, k1)
	for _, c := range []Claims{
		sampleReply,
		sampleBounce,
		{Kind: KindReply, Tenant: "t", ThreadModel: "helpdesk.ticket", ThreadID: "7 (spaces, ünïcode)", Message: "<odd>@x", Recipient: "Jérôme@exämple.com"},
		{Kind: KindBounce, Tenant: "t-1", Mail: "abc-", Recipient: "a@b"},
		{Kind: KindBounce, Tenant: "t", Mail: "aaaaaaaa-bbbbbbbb-cccccccc", Recipient: "x@y.z"},
	} {
		tok, err := k.Sign(c)
		if err != nil {
			t.Fatalf("Sign(%+v) = %v", c, err)
		}
		if !tokenRE.MatchString(tok) {
			t.Errorf("Sign(%+v) = %q, want only a-z and 2-7", c, tok)
		}
		got, err := k.Verify(tok)
		want := c
		want.KeyID = "k1"
		if err != nil || got != want {
			t.Errorf("Verify(Sign(%+v)) = %+v, %v, want %+v", c, got, err, want)
		}
		// Mail systems may change the case of a local part.
		if got, err := k.Verify(strings.ToUpper(tok)); err != nil || got != want {
			t.Errorf("Verify(upper-case token) = %+v, %v, want %+v", got, err, want)
		}
	}
}

func TestTokenLength(t *testing.T) {
	k := keys(t, k1)
	for _, c := range []Claims{sampleReply, sampleBounce} {
		tok, _ := k.Sign(c)
		t.Logf("%s token: %d characters", c.Kind, len(tok))
		if len(tok) > 150 {
			t.Errorf("%s token is %d characters, want it compact (≤ 150) for typical claims", c.Kind, len(tok))
		}
	}
}

func TestTamperingIsDetected(t *testing.T) {
	k := keys(t, k1)
	for _, c := range []Claims{sampleReply, sampleBounce} {
		tok, err := k.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		// Change every character in turn to every other one.
		alphabet := "abcdefghijklmnopqrstuvwxyz234567"
		for i := range len(tok) {
			for _, r := range alphabet {
				if byte(r) == tok[i] {
					continue
				}
				bad := tok[:i] + string(r) + tok[i+1:]
				got, err := k.Verify(bad)
				if err == nil {
					t.Fatalf("Verify(token with [%d]=%c) = %+v, want an error", i, r, got)
				}
				if !errors.Is(err, ErrForged) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownKey) {
					t.Fatalf("Verify(token with [%d]=%c) = %v, want ErrForged, ErrMalformed or ErrUnknownKey", i, r, err)
				}
			}
		}
		// Truncated and extended tokens.
		for _, bad := range []string{tok[:len(tok)-1], tok[:len(tok)/2], tok + "a", tok + "aa", "", "reply", "!!!"} {
			if _, err := k.Verify(bad); err == nil {
				t.Errorf("Verify(%q) = nil error, want one", bad)
			}
		}
	}
	// A token made with another key under the same id is forged.
	other := keys(t, Key{ID: "k1", Secret: bytes.Repeat([]byte{9}, 32)})
	tok, _ := other.Sign(sampleReply)
	if _, err := k.Verify(tok); !errors.Is(err, ErrForged) {
		t.Errorf("Verify(token of another key with id k1) = %v, want ErrForged", err)
	}
}

func TestKindIsSigned(t *testing.T) {
	k := keys(t, k1)
	tok, _ := k.Sign(Claims{Kind: KindBounce, Tenant: "acme", Mail: "m", Recipient: "r@x"})
	raw, _ := enc.DecodeString(tok)
	raw[1] = byte(KindReply)
	if _, err := k.Verify(enc.EncodeToString(raw)); err == nil {
		t.Error("a bounce token relabelled as a reply token verified, want an error")
	}
}

func TestUnknownKeyIsRejected(t *testing.T) {
	tok, err := keys(t, k2).Sign(sampleReply)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys(t, k1).Verify(tok); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Verify(token of k2) with only k1 = %v, want ErrUnknownKey", err)
	}
}

func TestRotation(t *testing.T) {
	old := keys(t, k1)
	oldTok, _ := old.Sign(sampleReply)

	// k2 becomes current; k1 stays listed: old tokens still verify, new
	// ones are signed with k2.
	rotated := keys(t, k2, k1)
	if got, err := rotated.Verify(oldTok); err != nil || got.KeyID != "k1" {
		t.Errorf("Verify(old token) after rotation = %+v, %v, want k1's claims", got, err)
	}
	newTok, _ := rotated.Sign(sampleReply)
	if got, err := rotated.Verify(newTok); err != nil || got.KeyID != "k2" {
		t.Errorf("Verify(new token) = %+v, %v, want signed by k2", got, err)
	}
	if _, err := old.Verify(newTok); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("a process with only k1 verifying a k2 token = %v, want ErrUnknownKey", err)
	}
	// Once k1 is removed, its tokens stop verifying.
	if _, err := keys(t, k2).Verify(oldTok); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Verify(old token) after k1 is removed = %v, want ErrUnknownKey", err)
	}
}

func TestSignRejectsInvalidClaims(t *testing.T) {
	k := keys(t, k1)
	tests := []Claims{
		{Kind: KindReply, Tenant: "acme", ThreadModel: "m", ThreadID: "1", Message: "x@y"}, // no recipient
		{Kind: KindBounce, Tenant: "acme", Recipient: "a@b"},                               // no mail
		{Kind: KindBounce, Tenant: "acme", Mail: "m", Recipient: "a@b\r\nBcc: c@d"},
		{Kind: 'x', Tenant: "acme", Mail: "m", Recipient: "a@b"},
		{Kind: KindBounce, Tenant: "acme", Mail: strings.Repeat("m", 999), Recipient: "a@b"},
		{Kind: KindBounce, Tenant: "acme", Mail: "\xff", Recipient: "a@b"},
	}
	for _, c := range tests {
		if tok, err := k.Sign(c); !errors.Is(err, ErrInvalidClaims) {
			t.Errorf("Sign(%+v) = %q, %v, want ErrInvalidClaims", c, tok, err)
		}
	}
}

func TestParseKeys(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString(k1.Secret)
	b64b := base64.RawURLEncoding.EncodeToString(k2.Secret)
	k, err := ParseKeys(strings.NewReader("# keys\n\nk2 " + b64b + "\n  k1 " + b64 + "  \n"))
	if err != nil {
		t.Fatal(err)
	}
	if k.CurrentID() != "k2" {
		t.Errorf("CurrentID() = %q, want k2 (the first line)", k.CurrentID())
	}
	tok, _ := keys(t, k1).Sign(sampleBounce)
	if _, err := k.Verify(tok); err != nil {
		t.Errorf("Verify(k1 token) with a file listing k1 second = %v", err)
	}

	short := base64.StdEncoding.EncodeToString([]byte("short"))
	for _, doc := range []string{
		"",
		"# only a comment\n",
		"k1\n",
		"k1 " + b64 + " extra\n",
		"K1 " + b64 + "\n",
		"toolongkeyid " + b64 + "\n",
		"k1 not*base64\n",
		"k1 " + short + "\n",
		"k1 " + b64 + "\nk1 " + b64 + "\n",
	} {
		if _, err := ParseKeys(strings.NewReader(doc)); !errors.Is(err, ErrInvalidKeys) {
			t.Errorf("ParseKeys(%q) = %v, want ErrInvalidKeys", doc, err)
		}
	}
}

func TestOpen(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	k, err := Open("", log)
	if err != nil || !k.Dev() || k.CurrentID() != "dev" {
		t.Fatalf("Open(\"\") = %v, %v, want the development keys", k, err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "PUBLIC") {
		t.Errorf("Open(\"\") logged %q, want a loud warning", logs.String())
	}
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte("k1 "+base64.StdEncoding.EncodeToString(k1.Secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err = Open(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || k.Dev() || k.CurrentID() != "k1" {
		t.Errorf("Open(file) = %v, %v, want k1", k, err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing"), log); err == nil {
		t.Error("Open(missing file) = nil error, want one")
	}
}

// FuzzVerify: Verify never panics, and whatever it accepts re-signs to an
// equivalent token.
func FuzzVerify(f *testing.F) {
	k := keys(f, k1)
	for _, c := range []Claims{sampleReply, sampleBounce} {
		tok, _ := k.Sign(c)
		f.Add(tok)
	}
	f.Add("")
	f.Add("aaaa")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := k.Verify(tok)
		if err != nil {
			return
		}
		again, err := k.Sign(c)
		if err != nil {
			t.Fatalf("Sign(Verify(%q)) = %v", tok, err)
		}
		if c2, err := k.Verify(again); err != nil || c2 != c {
			t.Fatalf("claims do not round-trip: %+v vs %+v (%v)", c, c2, err)
		}
	})
}

func ExampleKeys_Sign() {
	k := DevKeys()
	tok, _ := k.Sign(Claims{Kind: KindBounce, Tenant: "acme", Mail: "m1", Recipient: "ann@customer.example"})
	envelope := "bounce+" + tok + "@example.com"

	local, _, _ := strings.Cut(envelope, "@")
	c, err := k.Verify(strings.TrimPrefix(local, "bounce+"))
	fmt.Println(c.Kind, c.Tenant, c.Mail, c.Recipient, c.KeyID, err)
	// Output: bounce acme m1 ann@customer.example dev <nil>
}
