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
}

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
	// APIKeys are "sha256:<hex>" digests of the tenant's API keys.
	APIKeys []string `yaml:"api_keys"`
	// Servers are the outgoing servers; they are sorted by Sequence.
	Servers []*Server `yaml:"servers"`
	// DKIM lists the signing keys.
	DKIM []DKIMKey `yaml:"dkim"`

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
		if _, err := mail.ParseAddress(t.DefaultFrom); err != nil {
			return fmt.Errorf("default_from %q: %v", t.DefaultFrom, err)
		}
	}
	if t.CatchallAlias == "" {
		t.CatchallAlias = DefaultCatchallAlias
	}
	if t.BounceAlias == "" {
		t.BounceAlias = DefaultBounceAlias
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
	return nil
}

func (s *Server) normalise(dir string) error {
	if s.Name == "" {
		return errors.New("name is required")
	}
	if s.Host == "" {
		return errors.New("host is required")
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
