package rewrite

import (
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"slices"
	"strings"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/domains"
	"golang.org/x/net/idna"
)

// ErrInvalidAuthor is returned for an author without exactly one address,
// or with CR, LF or NUL in its address or name (mail-rules §4). Such a
// mail fails with the reason; nothing is sent.
var ErrInvalidAuthor = errors.New("rewrite: invalid author address")

// ErrInvalidAddress is returned by NormalizeAddress and ParseFromFilter.
var ErrInvalidAddress = errors.New("rewrite: invalid address")

// Author is the author of a mail as the From rules see it.
type Author struct {
	// Name is the display name; may be empty.
	Name string
	// Address is the addr-spec as given, case kept (mail-rules §10 #9:
	// normalising is for matching only).
	Address string
	// Norm is the matching form of Address (see NormalizeAddress).
	Norm string
	// Domain is the lower-cased domain, without IDNA conversion (§2).
	Domain string
	// ASCIIDomain is Domain as IDNA A-labels (RFC 5891), for DNS and the wire.
	ASCIIDomain string
}

// ParseAuthor returns the author of a mail from its partner's name and
// email. email may hold a display name ("Bob <bob@example.com>", as
// Odoo's email_from does); it is used when name is empty. The author is
// invalid (ErrInvalidAuthor) when email is empty, holds no or several
// addresses, or when email or name holds CR, LF or NUL (mail-rules §4), or
// when its domain is not a domain name IDNA can encode.
func ParseAuthor(name, email string) (Author, error) {
	if strings.ContainsAny(email, "\r\n\x00") || strings.ContainsAny(name, "\r\n\x00") {
		return Author{}, fmt.Errorf("%w %q: contains CR, LF or NUL", ErrInvalidAuthor, email)
	}
	a, err := parseOne(email)
	if err != nil {
		return Author{}, fmt.Errorf("%w %q: %v", ErrInvalidAuthor, email, err)
	}
	if name == "" {
		name = a.Name
		if strings.ContainsAny(name, "\r\n\x00") { // an encoded word can decode to anything
			return Author{}, fmt.Errorf("%w %q: the display name holds CR, LF or NUL", ErrInvalidAuthor, email)
		}
	}
	norm, domain := normalize(a.Address)
	ascii, err := asciiDomain(domain)
	if err != nil {
		return Author{}, fmt.Errorf("%w %q: %v", ErrInvalidAuthor, email, err)
	}
	return Author{Name: name, Address: a.Address, Norm: norm, Domain: domain, ASCIIDomain: ascii}, nil
}

// LocalPart is the part of a's address before the last '@'.
func (a Author) LocalPart() string {
	return a.Address[:strings.LastIndexByte(a.Address, '@')]
}

// String is the author as "Name <address>" or the bare address.
func (a Author) String() string {
	if a.Name == "" {
		return a.Address
	}
	return a.Name + " <" + a.Address + ">"
}

// parseOne parses s as exactly one address, display name allowed.
func parseOne(s string) (*mail.Address, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("no address")
	}
	list, err := mail.ParseAddressList(s)
	if err != nil {
		return nil, fmt.Errorf("not an address: %v", err)
	}
	if len(list) != 1 {
		return nil, fmt.Errorf("%d addresses, want exactly one", len(list))
	}
	if strings.LastIndexByte(list[0].Address, '@') <= 0 {
		return nil, errors.New("not an address")
	}
	return list[0], nil
}

// NormalizeAddress returns the matching form of s (mail-rules §2): s must
// hold exactly one address, without CR, LF or NUL; the display name is
// ignored ("fake@x.com" <a@y.com> is a@y.com), the domain is lower-cased,
// and the local part is lower-cased only when it is ASCII. No IDNA
// conversion is made.
func NormalizeAddress(s string) (string, error) {
	if strings.ContainsAny(s, "\r\n\x00") {
		return "", fmt.Errorf("%w %q: contains CR, LF or NUL", ErrInvalidAddress, s)
	}
	a, err := parseOne(s)
	if err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrInvalidAddress, s, err)
	}
	norm, _ := normalize(a.Address)
	return norm, nil
}

// normalize lower-cases a parsed addr-spec as §2 says and returns it with
// its domain.
func normalize(addr string) (norm, domain string) {
	at := strings.LastIndexByte(addr, '@')
	local, domain := addr[:at], strings.ToLower(addr[at+1:])
	if isASCII(local) {
		local = strings.ToLower(local)
	}
	return local + "@" + domain, domain
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// idnaProfile converts domains for DNS and the wire: UTS #46 mapping, as
// lookups do (RFC 5891 §5), with DNS length checks.
var idnaProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.VerifyDNSLength(true), idna.StrictDomainName(true))

// asciiDomain returns domain as A-labels (RFC 5891), lower-case.
func asciiDomain(domain string) (string, error) {
	if strings.HasPrefix(domain, "[") {
		return "", fmt.Errorf("address literal %s is not accepted", domain)
	}
	a, err := idnaProfile.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("domain %q is not a valid domain name: %v", domain, err)
	}
	return strings.ToLower(a), nil
}

// OrganizationalDomain is the organisational domain of an ASCII domain
// (RFC 7489 §3.2): the public suffix plus one label, by the Public Suffix
// List; a domain that is itself a public suffix is its own.
func OrganizationalDomain(domain string) string { return domains.Organizational(domain) }

// WireAddress returns addr as it goes on the wire: the local part quoted
// when it is not a dot-atom (RFC 5322 §3.4.1), the domain as IDNA
// A-labels when it is not ASCII (RFC 5890; mail-rules §4: "the envelope
// domain is IDNA-encoded on the wire"). An ASCII domain keeps its case.
func WireAddress(addr string) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || strings.ContainsAny(addr, "\r\n\x00") {
		return "", fmt.Errorf("%w %q", ErrInvalidAddress, addr)
	}
	local, domain := addr[:at], addr[at+1:]
	if !isASCII(domain) {
		a, err := asciiDomain(domain)
		if err != nil {
			return "", fmt.Errorf("%w %q: %v", ErrInvalidAddress, addr, err)
		}
		domain = a
	}
	if !isDotAtom(local) {
		local = quoteString(local)
	}
	return local + "@" + domain, nil
}

// isDotAtom reports whether s is a dot-atom (RFC 5322 §3.2.3; UTF-8 is
// atext as RFC 6532 §3.2 allows).
func isDotAtom(s string) bool {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r >= 0x80:
		case strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r):
		default:
			return false
		}
	}
	return true
}

// quoteString renders s as a quoted-string, '"' and '\' escaped (RFC 5322
// §3.2.4).
func quoteString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// FormatAddress renders a From header value from a display name and a
// wire address (see WireAddress): "name" <addr>, with '"' and '\' escaped
// (RFC 5322 §3.2.4); a name that is not printable ASCII goes out as RFC
// 2047 encoded words (§4 of mail-rules), which also encode any control
// character. An empty name gives the bare address. The result never holds
// CR or LF.
func FormatAddress(name, addr string) string {
	if name == "" {
		return addr
	}
	for _, r := range name {
		if r < 0x20 && r != '\t' || r >= 0x7f {
			return encodeName(name) + " <" + addr + ">"
		}
	}
	return quoteString(name) + " <" + addr + ">"
}

// encodeName renders name as encoded words fit for a phrase: "Q" when
// every ASCII character of name may appear in a Q-encoded word there (RFC
// 2047 §5 (3): letters, digits, space and !*+-/), which keeps names like
// Jérôme readable; "B" otherwise, since Go's Q encoder leaves characters
// such as '"' or '(' as they are.
func encodeName(name string) string {
	for _, r := range name {
		if r < 0x80 && !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(" !*+-/", r)) {
			return mime.BEncoding.Encode("utf-8", name)
		}
	}
	return mime.QEncoding.Encode("utf-8", name)
}

// FromFilter is a parsed from_filter (mail-rules §1, §2).
type FromFilter struct {
	raw     string
	addrs   []string // normalised addresses
	domains []string // lower-cased domains
}

// ParseFromFilter parses a comma-separated list of addresses and domains
// (parts trimmed, empty parts dropped). Address parts are kept in their
// matching form (NormalizeAddress), domain parts lower-cased.
func ParseFromFilter(s string) (FromFilter, error) {
	f := FromFilter{raw: s}
	for _, p := range config.FilterParts(s) {
		if strings.Contains(p, "@") {
			n, err := NormalizeAddress(p)
			if err != nil {
				return FromFilter{}, fmt.Errorf("rewrite: from filter part %q: %w", p, err)
			}
			f.addrs = append(f.addrs, n)
			continue
		}
		if strings.ContainsAny(p, " \t\r\n\x00<>()[]\",;:\\") {
			return FromFilter{}, fmt.Errorf("rewrite: from filter part %q is neither an address nor a domain", p)
		}
		f.domains = append(f.domains, strings.ToLower(p))
	}
	return f, nil
}

// String is the filter as configured.
func (f FromFilter) String() string { return f.raw }

// Empty reports whether the filter has no part; an empty filter matches
// every address (§2).
func (f FromFilter) Empty() bool { return len(f.addrs) == 0 && len(f.domains) == 0 }

// HasAddress reports whether a part is the address norm (normalised).
func (f FromFilter) HasAddress(norm string) bool { return slices.Contains(f.addrs, norm) }

// HasDomain reports whether a part is exactly domain (lower-cased): no
// sub-domain or parent-domain match, and no IDNA conversion (§2).
func (f FromFilter) HasDomain(domain string) bool { return slices.Contains(f.domains, domain) }

// Matches reports whether the normalised address norm matches the filter
// (§2): the filter is empty, or a part is the address, or a part is its
// domain.
func (f FromFilter) Matches(norm string) bool {
	if f.Empty() || f.HasAddress(norm) {
		return true
	}
	at := strings.LastIndexByte(norm, '@')
	return at >= 0 && f.HasDomain(norm[at+1:])
}
