// Package replytoken signs and verifies the tokens chattermail puts in the
// local part of the addresses it sends from, so that what comes back can be
// attributed without trusting anything else in the message:
//
//   - a reply token, in each recipient's Reply-To
//     (reply+<token>@<alias domain>), names the tenant, the thread, the
//     message and the recipient (mail-rules §6), so a reply is routed even
//     when the replying client drops References;
//   - a bounce token, in the VERP envelope sender
//     (bounce+<token>@<alias domain>), names the tenant, the mail and the
//     recipient (mail-rules §4, §7), so a bounce is attributed even when the
//     delivery status notification quotes nothing.
//
// A token is self-contained: the claims are in it, followed by an
// HMAC-SHA256 (RFC 2104) over everything before it, truncated to 128 bits
// (RFC 2104 §5: at least half the hash output). It cannot be forged or
// altered without a key. The key that signed it is named by a key id
// inside the token, so keys rotate: new tokens are signed with the current
// key, and tokens of older keys verify for as long as those keys stay
// listed.
//
// The token is lower-case base32 without padding (RFC 4648 §6, the
// alphabet a-z2-7), so it is a valid dot-atom in a local part (RFC 5322
// §3.4.1) and survives mail systems that change the case of local parts
// (Verify lower-cases first). Claims are packed in binary, ids made of
// base32 segments (chattermail's post and mail ids) in their decoded form,
// so a token is about 1.6 characters per byte of its claims plus 30. For
// typical values that is 120 to 150 characters: longer than the 64 octets
// RFC 5321 §4.5.3.1.1 sets for a local part. The only server that must
// accept these addresses is chattermail's own inbound server; the servers
// that relay a reply or a bounce do not enforce that limit in practice (as
// the reply addresses of large services show).
//
// Keys are read from a file (see ParseKeys): one key per line,
// "<key id> <base64 key>", the first line being the current signing key.
package replytoken

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"unicode/utf8"
)

// EnvKeysFile is the environment variable (and -reply-token-keys flag)
// naming the key file.
const EnvKeysFile = "REPLY_TOKEN_KEYS_FILE"

// MinKeyLen is the shortest accepted key, in bytes; 32 is recommended
// (RFC 2104 §3: at least the hash output length).
const MinKeyLen = 16

// macLen is the length of the truncated HMAC-SHA256 in a token: 128 bits.
const macLen = 16

// version is the first byte of every token.
const version = 1

// maxField is the longest claim value accepted, in bytes.
const maxField = 998

// Errors of Verify and the key file parser. Verify's errors wrap one of
// ErrMalformed, ErrUnknownKey or ErrForged.
var (
	// ErrMalformed is a token that is not one: bad characters, truncated,
	// unknown version or kind, trailing data.
	ErrMalformed = errors.New("replytoken: malformed token")
	// ErrUnknownKey is a well-formed token signed with a key id that is not
	// (or no longer) listed.
	ErrUnknownKey = errors.New("replytoken: unknown key id")
	// ErrForged is a token whose signature does not match its content:
	// altered, or made without the key.
	ErrForged = errors.New("replytoken: signature does not match")
	// ErrInvalidClaims is returned by Sign for claims missing a required
	// field or holding one that cannot be carried.
	ErrInvalidClaims = errors.New("replytoken: invalid claims")
	// ErrInvalidKeys wraps every problem of a key file.
	ErrInvalidKeys = errors.New("replytoken: invalid keys")
)

// Kind says what a token is for; a token of one kind never verifies as
// the other, because the kind is signed.
type Kind byte

const (
	// KindReply is the token of a Reply-To address.
	KindReply Kind = 'r'
	// KindBounce is the token of a VERP envelope sender.
	KindBounce Kind = 'b'
)

// String is "reply" or "bounce".
func (k Kind) String() string {
	switch k {
	case KindReply:
		return "reply"
	case KindBounce:
		return "bounce"
	}
	return fmt.Sprintf("Kind(%d)", byte(k))
}

// Claims are what a token names.
type Claims struct {
	Kind Kind
	// Tenant is the tenant id. Required.
	Tenant string
	// ThreadModel and ThreadID name the thread (a reply token's, required).
	ThreadModel string
	ThreadID    string
	// Message is the RFC 5322 Message-ID of the message replied to,
	// without angle brackets (a reply token's, required).
	Message string
	// Mail is the id of one recipient's copy (a bounce token's, required).
	Mail string
	// Recipient is the recipient's address. Required.
	Recipient string
	// KeyID is the id of the key that signed the token; Verify sets it,
	// Sign ignores it.
	KeyID string
}

// fields lists the claims a kind carries, in their order in the token.
func (c *Claims) fields() ([]*string, error) {
	switch c.Kind {
	case KindReply:
		return []*string{&c.Tenant, &c.ThreadModel, &c.ThreadID, &c.Message, &c.Recipient}, nil
	case KindBounce:
		return []*string{&c.Tenant, &c.Mail, &c.Recipient}, nil
	}
	return nil, fmt.Errorf("kind %d", byte(c.Kind))
}

// Key is one signing key.
type Key struct {
	// ID names the key in tokens: 1-8 characters of a-z and 0-9.
	ID string
	// Secret is the HMAC key, at least MinKeyLen bytes.
	Secret []byte
}

var keyIDRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// Keys signs with its current key and verifies with any listed key. It is
// safe for concurrent use.
type Keys struct {
	current Key
	byID    map[string][]byte
	dev     bool
}

// NewKeys returns the key set of keys; the first is the current signing key.
func NewKeys(keys ...Key) (*Keys, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no key", ErrInvalidKeys)
	}
	k := &Keys{current: keys[0], byID: map[string][]byte{}}
	for _, key := range keys {
		if !keyIDRE.MatchString(key.ID) {
			return nil, fmt.Errorf("%w: key id %q must be 1-8 characters of a-z and 0-9", ErrInvalidKeys, key.ID)
		}
		if len(key.Secret) < MinKeyLen {
			return nil, fmt.Errorf("%w: key %q is %d bytes, want at least %d", ErrInvalidKeys, key.ID, len(key.Secret), MinKeyLen)
		}
		if _, dup := k.byID[key.ID]; dup {
			return nil, fmt.Errorf("%w: key id %q is listed twice", ErrInvalidKeys, key.ID)
		}
		k.byID[key.ID] = bytes.Clone(key.Secret)
	}
	return k, nil
}

// ParseKeys reads a key file: one key per line, "<key id> <key>", the key
// in base64 (standard or URL alphabet, padding optional), the first key
// being the current signing key. Blank lines and lines starting with '#'
// are ignored. To rotate, put a new key on the first line and keep the old
// one below it for as long as its tokens must verify (replies can come
// months later).
//
// Make a key with: printf '%s %s\n' k2 "$(head -c 32 /dev/urandom | base64)"
func ParseKeys(r io.Reader) (*Keys, error) {
	var keys []Key
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%w: line %d: want \"<key id> <base64 key>\"", ErrInvalidKeys, n)
		}
		secret, err := decodeKey(f[1])
		if err != nil {
			return nil, fmt.Errorf("%w: line %d (key %q): not base64", ErrInvalidKeys, n, f[0])
		}
		keys = append(keys, Key{ID: f[0], Secret: secret})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKeys, err)
	}
	return NewKeys(keys...)
}

func decodeKey(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawURLEncoding.DecodeString(s)
}

// LoadKeys reads the key file at path (see ParseKeys).
func LoadKeys(path string) (*Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("replytoken: %w", err)
	}
	defer f.Close()
	k, err := ParseKeys(f)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return k, nil
}

// devSecret is the development key. It is public: anyone can forge the
// tokens it signs.
const devSecret = "chattermail development reply-token key: PUBLIC, NOT A SECRET"

// DevKeys returns the development key set (key id "dev"): a fixed, public
// key, so that "chattermail dev", separate processes of a test and their
// assertions agree without a key file. Never use it in production.
func DevKeys() *Keys {
	k, err := NewKeys(Key{ID: "dev", Secret: []byte(devSecret)})
	if err != nil {
		panic(err) // the constant is valid
	}
	k.dev = true
	return k
}

// Open returns the keys of the file at path, the value of the
// REPLY_TOKEN_KEYS_FILE setting. When path is empty it returns DevKeys and
// logs a loud warning: tokens signed with the development key can be
// forged by anyone.
func Open(path string, log *slog.Logger) (*Keys, error) {
	if path != "" {
		return LoadKeys(path)
	}
	log.Warn("REPLY_TOKEN_KEYS_FILE is not set: reply and bounce tokens are signed with the PUBLIC development key " +
		"and anyone can forge them. Fine for a laptop or a test; in production set REPLY_TOKEN_KEYS_FILE " +
		"to a file of \"<key id> <base64 key>\" lines")
	return DevKeys(), nil
}

// Dev reports whether these are the development keys.
func (k *Keys) Dev() bool { return k.dev }

// CurrentID is the id of the signing key.
func (k *Keys) CurrentID() string { return k.current.ID }

// enc is lower-case base32 without padding (RFC 4648 §6).
var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Sign returns the token of c, signed with the current key. Every field of
// c's kind is required, holds at most 998 bytes of UTF-8, and no CR, LF or
// NUL.
func (k *Keys) Sign(c Claims) (string, error) {
	fields, err := c.fields()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidClaims, err)
	}
	b := make([]byte, 0, 96)
	b = append(b, version, byte(c.Kind))
	b = appendString(b, k.current.ID)
	for i, f := range fields {
		v := *f
		if v == "" || len(v) > maxField || !utf8.ValidString(v) || strings.ContainsAny(v, "\r\n\x00") {
			return "", fmt.Errorf("%w: %s field %d is empty, too long or holds CR, LF, NUL or invalid UTF-8", ErrInvalidClaims, c.Kind, i+1)
		}
		b = appendField(b, v)
	}
	b = append(b, mac(k.current.Secret, b)...)
	return enc.EncodeToString(b), nil
}

// Verify checks token and returns its claims, with KeyID set. Its errors
// wrap ErrMalformed, ErrUnknownKey or ErrForged.
func (k *Keys) Verify(token string) (Claims, error) {
	token = strings.ToLower(token)
	raw, err := enc.DecodeString(token)
	// A non-canonical encoding (unused low bits set in the last character)
	// would let two strings carry one token.
	if err != nil || len(raw) < 3+macLen || enc.EncodeToString(raw) != token {
		return Claims{}, ErrMalformed
	}
	body, sum := raw[:len(raw)-macLen], raw[len(raw)-macLen:]
	if body[0] != version {
		return Claims{}, fmt.Errorf("%w: version %d", ErrMalformed, body[0])
	}
	c := Claims{Kind: Kind(body[1])}
	fields, err := c.fields()
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	rest := body[2:]
	kid, rest, ok := readString(rest)
	if !ok || !keyIDRE.MatchString(kid) {
		return Claims{}, fmt.Errorf("%w: key id", ErrMalformed)
	}
	secret, known := k.byID[kid]
	if !known {
		return Claims{}, fmt.Errorf("%w %q", ErrUnknownKey, kid)
	}
	if !hmac.Equal(sum, mac(secret, body)) {
		return Claims{}, ErrForged
	}
	// Only signed bytes are parsed from here on.
	for _, f := range fields {
		if *f, rest, ok = readField(rest); !ok {
			return Claims{}, fmt.Errorf("%w: truncated claims", ErrMalformed)
		}
	}
	if len(rest) != 0 {
		return Claims{}, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	c.KeyID = kid
	return c, nil
}

// mac is HMAC-SHA256(secret, "chattermail-token" NUL body) truncated to
// macLen bytes (RFC 2104 §5).
func mac(secret, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("chattermail-token\x00"))
	h.Write(body)
	return h.Sum(nil)[:macLen]
}

// Field encodings: a uvarint header holds the encoding in its two low
// bits and a count above them.
const (
	// fieldRaw: the count is the value's length; its bytes follow.
	fieldRaw = 0
	// fieldIDs: the value is lower-case base32 segments joined by '-'
	// (chattermail's post and mail ids); the count is the number of
	// segments, each then written as a string of its decoded bytes.
	fieldIDs = 1
	// fieldIDsAt: as fieldIDs, followed by '@' and a string (a Message-ID
	// such as <post id>@<alias domain>).
	fieldIDsAt = 2
)

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readString(b []byte) (string, []byte, bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}

func appendField(b []byte, v string) []byte {
	if segs, ok := idSegments(v); ok {
		return appendSegments(b, fieldIDs, segs)
	}
	if left, right, ok := strings.Cut(v, "@"); ok {
		if segs, ok := idSegments(left); ok {
			return appendString(appendSegments(b, fieldIDsAt, segs), right)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(v))<<2|fieldRaw)
	return append(b, v...)
}

func appendSegments(b []byte, encoding uint64, segs [][]byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(segs))<<2|encoding)
	for _, s := range segs {
		b = appendString(b, string(s))
	}
	return b
}

func readField(b []byte) (string, []byte, bool) {
	h, w := binary.Uvarint(b)
	if w <= 0 {
		return "", nil, false
	}
	b = b[w:]
	n := h >> 2
	switch h & 3 {
	case fieldRaw:
		if n > uint64(len(b)) {
			return "", nil, false
		}
		return string(b[:n]), b[n:], true
	case fieldIDs, fieldIDsAt:
		if n == 0 || n > uint64(len(b)) {
			return "", nil, false
		}
		parts := make([]string, 0, n)
		for range n {
			var s string
			var ok bool
			if s, b, ok = readString(b); !ok || s == "" {
				return "", nil, false
			}
			parts = append(parts, enc.EncodeToString([]byte(s)))
		}
		v := strings.Join(parts, "-")
		if h&3 == fieldIDsAt {
			right, rest, ok := readString(b)
			if !ok {
				return "", nil, false
			}
			v, b = v+"@"+right, rest
		}
		return v, b, true
	}
	return "", nil, false
}

// idSegments decodes v when it is base32 segments joined by '-', each of
// which re-encodes to itself (so the round trip is exact).
func idSegments(v string) ([][]byte, bool) {
	parts := strings.Split(v, "-")
	segs := make([][]byte, 0, len(parts))
	for _, p := range parts {
		d, err := enc.DecodeString(p)
		if err != nil || len(d) == 0 || enc.EncodeToString(d) != p {
			return nil, false
		}
		segs = append(segs, d)
	}
	return segs, true
}
