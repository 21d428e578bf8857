// Package config loads the tenants file: one YAML document that gives each
// tenant the settings of mail-rules §1 (alias domain, default from,
// catchall and bounce aliases, default from filter, outgoing servers,
// daily limit, DKIM keys, time zone).
//
// Example:
//
//	tenants:
//	  acme:
//	    alias_domain: example.com
//	    default_from: notifications      # local part or full address
//	    daily_limit: 500
//	    api_keys: ["sha256:9f86d0..."]   # SHA-256 of each API key, never the key
//	    servers:
//	      - name: relay
//	        sequence: 10
//	        from_filter: example.com
//	        host: smtp.example.com
//	        port: 587
//	        tls: starttls
//	        username: acme
//	        password_file: /run/secrets/acme-smtp
//	    pacing:                          # per recipient domain, this tenant's mail
//	      - {domain: gmail.com, per_minute: 60}
//	pacing:                              # per recipient domain, all tenants together
//	  - {domain: outlook.com, per_minute: 600, burst: 20}
//
// Unknown keys are errors, so a misspelt setting never silently falls back
// to a default.
package config

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/chattermail/chattermail/platform/bus"
	"go.yaml.in/yaml/v3"
)

// Defaults of mail-rules §1.
const (
	DefaultFrom          = "notifications"
	DefaultCatchallAlias = "catchall"
	DefaultBounceAlias   = "bounce"
	DefaultDailyLimit    = 200
	DefaultDKIMSelector  = "odoo"
)

// ErrInvalid wraps every validation error.
var ErrInvalid = errors.New("config: invalid")

// Config is the whole tenants file.
type Config struct {
	// Tenants by id.
	Tenants map[string]*Tenant `yaml:"tenants"`
	// Pacing limits how fast mail of all tenants together goes to a
	// recipient domain; optional. See Pacing.
	Pacing []Pacing `yaml:"pacing"`
}

// Pacing is one rule of per-domain pacing: at most PerMinute mails a
// minute to the recipient domain Domain (a mailbox provider), enforced by
// the quota stage on top of the daily limit. Mail over the pace is
// delayed, never failed. At the top of the file a rule counts the mail of
// every tenant together; under a tenant, that tenant's mail only.
//
//	pacing:
//	  - {domain: gmail.com, per_minute: 60}
//	  - {domain: outlook.com, per_minute: 120, burst: 10}
type Pacing struct {
	// Domain is the recipient domain the rule applies to, exactly (not
	// its subdomains); ASCII, case-insensitive. Required.
	Domain string `yaml:"domain"`
	// PerMinute is the steady rate, mails per minute; required, positive.
	PerMinute int `yaml:"per_minute"`
	// Burst is how many mails may leave at once before the steady rate
	// applies; default 1 (mails evenly spaced, 60s/PerMinute apart).
	Burst int `yaml:"burst"`
}

// Interval is the time between two mails at the steady rate.
func (p Pacing) Interval() time.Duration { return time.Minute / time.Duration(p.PerMinute) }

// Tenant is one tenant's settings (mail-rules §1).
type Tenant struct {
	// ID is the map key in the file.
	ID string `yaml:"-"`
	// AliasDomain is the tenant's mail domain (ASCII), where replies,
	// bounces and the notification address live. Required.
	AliasDomain string `yaml:"alias_domain"`
	// DefaultFrom is a local part or a full address; default "notifications".
	DefaultFrom string `yaml:"default_from"`
	// CatchallAlias is the local part of the generic Reply-To; default "catchall".
	CatchallAlias string `yaml:"catchall_alias"`
	// BounceAlias is the local part of the envelope sender; default "bounce".
	BounceAlias string `yaml:"bounce_alias"`
	// DefaultFromFilter applies only when the tenant has no servers.
	DefaultFromFilter string `yaml:"default_from_filter"`
	// DailyLimit is the number of emails per window; default 200. A
	// runtime override (quota API) wins over it until cleared.
	DailyLimit int `yaml:"daily_limit"`
	// TimeZone is the IANA zone of the daily window; default UTC.
	TimeZone string `yaml:"time_zone"`
	// VERP turns per-recipient bounce addresses on or off; default on.
	VERP *bool `yaml:"verp"`
	// InboundAuth is what happens to an inbound reply whose authenticated
	// sender (DMARC-aligned SPF or DKIM) is not the recipient its reply
	// token was issued to: accept (post it), flag (post it marked as
	// unverified; the default) or reject (drop it).
	InboundAuth string `yaml:"inbound_auth"`
	// APIKeys are "sha256:<hex>" digests of the tenant's API keys.
	APIKeys []string `yaml:"api_keys"`
	// Servers are the outgoing servers; they are sorted by Sequence.
	Servers []*Server `yaml:"servers"`
	// DKIM lists the signing keys.
	DKIM []DKIMKey `yaml:"dkim"`
	// Pacing limits how fast this tenant's mail goes to a recipient
	// domain; optional. See Pacing.
	Pacing []Pacing `yaml:"pacing"`

	location *time.Location
}

// Server is one outgoing SMTP server (Odoo's ir.mail_server).
type Server struct {
	// Name identifies the server in decisions and logs. Required.
	Name string `yaml:"name"`
	// Sequence orders servers, lowest first; ties keep file order.
	Sequence int `yaml:"sequence"`
	// FromFilter is a comma-separated list of addresses and domains.
	FromFilter string `yaml:"from_filter"`
	// Host and Port of the server. Port defaults by TLS mode: 465 for
	// implicit, 587 for starttls, 25 otherwise.
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// TLS is none, starttls (default), opportunistic or implicit.
	TLS string `yaml:"tls"`
	// Username for AUTH; the password comes from PasswordFile.
	Username string `yaml:"username"`
	// PasswordFile holds the AUTH password (a mounted secret).
	PasswordFile string `yaml:"password_file"`
	// Password is read from PasswordFile at load time; it is never logged.
	Password Secret `yaml:"-"`
}

// DKIMKey is one signing key.
type DKIMKey struct {
	Domain string `yaml:"domain"`
	// Selector defaults to "odoo".
	Selector string `yaml:"selector"`
	// Algorithm is rsa (default) or ed25519.
	Algorithm string `yaml:"algorithm"`
	// KeyFile is a PEM private key (PKCS#1 or PKCS#8).
	KeyFile string `yaml:"key_file"`
}

// Values of Tenant.InboundAuth.
const (
	InboundAuthAccept = "accept"
	InboundAuthFlag   = "flag"
	InboundAuthReject = "reject"
)

// TLS modes of Server.TLS.
const (
	TLSNone          = "none"
	TLSStartTLS      = "starttls"
	TLSOpportunistic = "opportunistic"
	TLSImplicit      = "implicit"
)

// Secret is a string that never prints.
type Secret string

func (Secret) String() string               { return "***" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("***") }
func (Secret) MarshalText() ([]byte, error) { return []byte("***"), nil }

// Load reads and validates the tenants file at path. Relative key and
// password file paths are taken relative to the file's folder.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, filepath.Dir(path))
}

// Parse validates a tenants document; dir resolves relative file paths.
func Parse(data []byte, dir string) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(c.Tenants) == 0 {
		return nil, fmt.Errorf("%w: no tenants", ErrInvalid)
	}
	for id, t := range c.Tenants {
		if t == nil {
			return nil, fmt.Errorf("%w: tenant %q: empty", ErrInvalid, id)
		}
		t.ID = id
		if err := t.normalise(dir); err != nil {
			return nil, fmt.Errorf("%w: tenant %q: %v", ErrInvalid, id, err)
		}
	}
	if err := normalisePacing(c.Pacing); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return &c, nil
}

// Tenant returns the tenant with id, or nil.
func (c *Config) Tenant(id string) *Tenant {
	if c == nil {
		return nil
	}
	return c.Tenants[id]
}

// IDs returns the tenant ids, sorted.
func (c *Config) IDs() []string {
	ids := make([]string, 0, len(c.Tenants))
	for id := range c.Tenants {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (t *Tenant) normalise(dir string) error {
	if err := bus.ValidTenant(t.ID); err != nil {
		return err
	}
	t.AliasDomain = strings.ToLower(strings.TrimSpace(t.AliasDomain))
	if t.AliasDomain == "" {
		return errors.New("alias_domain is required")
	}
	if !isASCIIDomain(t.AliasDomain) {
		return fmt.Errorf("alias_domain %q must be an ASCII domain name", t.AliasDomain)
	}
	if t.DefaultFrom == "" {
		t.DefaultFrom = DefaultFrom
	}
	if strings.Contains(t.DefaultFrom, "@") {
		if !isPlainAddress(t.DefaultFrom) {
			return fmt.Errorf("default_from %q is not an address like noreply@example.com (a plain address, without display name)", t.DefaultFrom)
		}
	} else if !isLocalPart(t.DefaultFrom) {
		return fmt.Errorf("default_from %q is neither a local part like notifications nor an address like noreply@example.com", t.DefaultFrom)
	}
	if t.CatchallAlias == "" {
		t.CatchallAlias = DefaultCatchallAlias
	}
	if !isLocalPart(t.CatchallAlias) {
		return fmt.Errorf("catchall_alias %q is not a local part like catchall", t.CatchallAlias)
	}
	if t.BounceAlias == "" {
		t.BounceAlias = DefaultBounceAlias
	}
	if !isLocalPart(t.BounceAlias) {
		return fmt.Errorf("bounce_alias %q is not a local part like bounce", t.BounceAlias)
	}
	if err := checkFilter(t.DefaultFromFilter); err != nil {
		return fmt.Errorf("default_from_filter: %v", err)
	}
	switch {
	case t.DailyLimit == 0:
		t.DailyLimit = DefaultDailyLimit
	case t.DailyLimit < 0:
		return fmt.Errorf("daily_limit %d must be positive", t.DailyLimit)
	}
	if t.TimeZone == "" {
		t.TimeZone = "UTC"
	}
	loc, err := time.LoadLocation(t.TimeZone)
	if err != nil {
		return fmt.Errorf("time_zone %q: %v", t.TimeZone, err)
	}
	t.location = loc
	switch t.InboundAuth {
	case "":
		t.InboundAuth = InboundAuthFlag
	case InboundAuthAccept, InboundAuthFlag, InboundAuthReject:
	default:
		return fmt.Errorf("inbound_auth %q must be accept, flag or reject", t.InboundAuth)
	}
	for _, k := range t.APIKeys {
		if _, err := parseKeyDigest(k); err != nil {
			return err
		}
	}
	names := map[string]bool{}
	for i, s := range t.Servers {
		if s == nil {
			return fmt.Errorf("servers[%d]: empty", i)
		}
		if err := s.normalise(dir); err != nil {
			return fmt.Errorf("server %d (%q): %v", i, s.Name, err)
		}
		if names[s.Name] {
			return fmt.Errorf("server name %q is used twice", s.Name)
		}
		names[s.Name] = true
	}
	slices.SortStableFunc(t.Servers, func(a, b *Server) int { return a.Sequence - b.Sequence })
	for i := range t.DKIM {
		k := &t.DKIM[i]
		k.Domain = strings.ToLower(strings.TrimSpace(k.Domain))
		if k.Domain == "" || k.KeyFile == "" {
			return fmt.Errorf("dkim[%d]: domain and key_file are required", i)
		}
		if !isDomainName(k.Domain) {
			return fmt.Errorf("dkim[%d]: domain %q is not a domain name", i, k.Domain)
		}
		if k.Selector == "" {
			k.Selector = DefaultDKIMSelector
		}
		if k.Algorithm == "" {
			k.Algorithm = "rsa"
		}
		if k.Algorithm != "rsa" && k.Algorithm != "ed25519" {
			return fmt.Errorf("dkim[%d]: algorithm %q must be rsa or ed25519", i, k.Algorithm)
		}
		k.KeyFile = resolve(dir, k.KeyFile)
	}
	return normalisePacing(t.Pacing)
}

// normalisePacing lower-cases the rules' domains, sets default bursts and
// validates the rules; its errors name the key, as "pacing[1].per_minute".
func normalisePacing(rules []Pacing) error {
	seen := map[string]bool{}
	for i := range rules {
		p := &rules[i]
		p.Domain = strings.ToLower(strings.TrimSpace(p.Domain))
		switch {
		case p.Domain == "":
			return fmt.Errorf("pacing[%d].domain is required", i)
		case !isASCIIDomain(p.Domain):
			return fmt.Errorf("pacing[%d].domain %q must be an ASCII domain name", i, p.Domain)
		case seen[p.Domain]:
			return fmt.Errorf("pacing[%d].domain %q has a rule already", i, p.Domain)
		case p.PerMinute <= 0:
			return fmt.Errorf("pacing[%d].per_minute %d must be positive", i, p.PerMinute)
		case p.PerMinute > 60_000_000:
			return fmt.Errorf("pacing[%d].per_minute %d must be at most 60000000", i, p.PerMinute)
		case p.Burst < 0:
			return fmt.Errorf("pacing[%d].burst %d must not be negative", i, p.Burst)
		}
		if p.Burst == 0 {
			p.Burst = 1
		}
		seen[p.Domain] = true
	}
	return nil
}

func (s *Server) normalise(dir string) error {
	if s.Name == "" {
		return errors.New("name is required")
	}
	if s.Host == "" {
		return errors.New("host is required")
	}
	if err := checkFilter(s.FromFilter); err != nil {
		return fmt.Errorf("from_filter: %v", err)
	}
	if s.TLS == "" {
		s.TLS = TLSStartTLS
	}
	switch s.TLS {
	case TLSNone, TLSOpportunistic:
		if s.Port == 0 {
			s.Port = 25
		}
	case TLSStartTLS:
		if s.Port == 0 {
			s.Port = 587
		}
	case TLSImplicit:
		if s.Port == 0 {
			s.Port = 465
		}
	default:
		return fmt.Errorf("tls %q must be none, starttls, opportunistic or implicit", s.TLS)
	}
	if s.Port < 1 || s.Port > 65535 {
		return fmt.Errorf("port %d out of range", s.Port)
	}
	if s.PasswordFile != "" {
		s.PasswordFile = resolve(dir, s.PasswordFile)
		b, err := os.ReadFile(s.PasswordFile)
		if err != nil {
			return fmt.Errorf("password_file: %v", err)
		}
		s.Password = Secret(strings.TrimRight(string(b), "\r\n"))
	}
	if s.Username != "" && s.PasswordFile == "" {
		return errors.New("username needs password_file")
	}
	return nil
}

// Location is the time zone of the tenant's daily window.
func (t *Tenant) Location() *time.Location {
	if t.location == nil {
		return time.UTC
	}
	return t.location
}

// NotificationAddress is default_from when it holds '@', else
// default_from@alias_domain (mail-rules §1).
func (t *Tenant) NotificationAddress() string {
	if strings.Contains(t.DefaultFrom, "@") {
		return t.DefaultFrom
	}
	return t.DefaultFrom + "@" + t.AliasDomain
}

// BounceAddress is bounce_alias@alias_domain.
func (t *Tenant) BounceAddress() string { return t.BounceAlias + "@" + t.AliasDomain }

// CatchallAddress is catchall_alias@alias_domain.
func (t *Tenant) CatchallAddress() string { return t.CatchallAlias + "@" + t.AliasDomain }

// VERPEnabled reports whether per-recipient bounce addresses are used.
func (t *Tenant) VERPEnabled() bool { return t.VERP == nil || *t.VERP }

// Server returns the server named name, or nil.
func (t *Tenant) Server(name string) *Server {
	for _, s := range t.Servers {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// CheckAPIKey reports whether key is one of the tenant's API keys. It
// compares SHA-256 digests in constant time.
func (t *Tenant) CheckAPIKey(key string) bool {
	sum := sha256.Sum256([]byte(key))
	ok := false
	for _, k := range t.APIKeys {
		d, err := parseKeyDigest(k)
		if err == nil && subtle.ConstantTimeCompare(d, sum[:]) == 1 {
			ok = true
		}
	}
	return ok
}

// APIKeyDigest returns the "sha256:<hex>" form of key for the tenants file.
func APIKeyDigest(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func parseKeyDigest(s string) ([]byte, error) {
	h, ok := strings.CutPrefix(s, "sha256:")
	b, err := hex.DecodeString(h)
	if !ok || err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("api_keys: %q is not sha256:<64 hex digits>", s)
	}
	return b, nil
}

func resolve(dir, p string) string {
	if p == "" || filepath.IsAbs(p) || dir == "" {
		return p
	}
	return filepath.Join(dir, p)
}

// FilterParts splits a from filter (from_filter, default_from_filter) into
// its parts: comma-separated, each part trimmed, empty parts dropped
// (mail-rules §1). Each part is an address or a domain.
func FilterParts(filter string) []string {
	var parts []string
	for p := range strings.SplitSeq(filter, ",") {
		if p = strings.TrimSpace(p); p != "" {
			parts = append(parts, p)
		}
	}
	return parts
}

// checkFilter reports the first part of filter that is neither a plain
// address nor a domain name.
func checkFilter(filter string) error {
	for _, p := range FilterParts(filter) {
		if strings.Contains(p, "@") {
			if !isPlainAddress(p) {
				return fmt.Errorf("%q is not an address like name@example.com", p)
			}
		} else if !isDomainName(p) {
			return fmt.Errorf("%q is neither an address (name@example.com) nor a domain name (example.com)", p)
		}
	}
	return nil
}

// isPlainAddress reports whether s is one addr-spec (RFC 5322 §3.4.1)
// without display name or angle brackets, on a domain name.
func isPlainAddress(s string) bool {
	if strings.ContainsAny(s, "\r\n\x00") {
		return false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return false
	}
	at := strings.LastIndexByte(s, '@')
	return isLocalPart(s[:at]) && isDomainName(s[at+1:])
}

// isLocalPart reports whether s is a dot-atom local part (RFC 5322 §3.2.3,
// with UTF-8 allowed as in RFC 6532 §3.2) of at most 64 octets (RFC 5321
// §4.5.3.1.1).
func isLocalPart(s string) bool {
	if s == "" || len(s) > 64 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.':
		case strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r):
		case r >= 0x80 && unicode.IsPrint(r):
		default:
			return false
		}
	}
	return true
}

// isDomainName reports whether d is a domain name: dot-separated labels of
// 1-63 octets made of letters (any script, for internationalised names),
// digits and inner hyphens, at most 253 octets in all (RFC 1035 §2.3.4,
// RFC 5890 §2.3.2.1). Whether an internationalised name converts to
// IDNA is checked where it is used.
func isDomainName(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') ||
				r >= 0x80 && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r))) {
				return false
			}
		}
	}
	return true
}

func isASCIIDomain(d string) bool {
	if len(d) > 253 || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") {
		return false
	}
	for _, r := range d {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}
