package sender

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/dkimkey"
	"github.com/emersion/go-msgauth/dkim"
	"golang.org/x/net/publicsuffix"
)

// ErrDKIMKey wraps every reason a DKIM key file cannot be used.
var ErrDKIMKey = errors.New("sender: dkim key")

// minRSABits is the smallest RSA key the sender signs with: RFC 8301 §3.2
// forbids keys under 1024 bits (and asks for 2048, the size to generate).
const minRSABits = 1024

// signedHeaders are the fields a DKIM signature covers when the message
// has them, in the order of RFC 6376 §5.4.1's list. From, To and Subject
// are over-signed (RFC 6376 §8.15): listed once more than they occur, so
// that a field of that name added in transit breaks the signature.
var (
	signedHeaders = []string{
		"From", "Sender", "Reply-To", "Subject", "Date", "To", "Cc",
		"Message-ID", "In-Reply-To", "References",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
		"List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
		"Auto-Submitted", "X-Auto-Response-Suppress",
	}
	overSigned = map[string]bool{"From": true, "To": true, "Subject": true}
)

// signingKey is one loaded key of a tenant's dkim list.
type signingKey struct {
	domain    string
	selector  string
	algorithm string // "rsa" or "ed25519"
	signer    crypto.Signer
}

// keyFile is the last loaded state of one PEM file.
type keyFile struct {
	// stamp is the file's version; zero when it could not be read.
	stamp fileStamp
	// key signs; it is the previous key when the file's current version
	// is unusable, nil when there never was a usable one.
	key crypto.Signer
	// err says why the current version is unusable.
	err error
}

// fileStamp identifies a version of a file: its modification time and
// size. A key rotated by rewriting or replacing the file (including the
// symlink swap of a Kubernetes secret) changes it.
type fileStamp struct {
	mtime time.Time
	size  int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// keyring holds every tenant's DKIM signing keys (mail-rules §1: the
// tenant's dkim list) and signs messages with them. It reloads a key file
// when its modification time or size changes, and the dkim lists when the
// tenants file changes, checking at most once per interval, so keys are
// rotated without a restart:
//
//  1. add: list the new selector after the current one (and publish its
//     DNS record); the first key of each algorithm per domain signs;
//  2. switch: move the new selector first;
//  3. retire: remove the old entry (and, later, its DNS record).
//
// A key file that cannot be read or parsed on reload keeps its previous
// key (and an error is logged); a new key that fails is left out.
//
// A keyring is safe for concurrent use.
type keyring struct {
	log        *slog.Logger
	configPath string
	interval   time.Duration

	mu        sync.Mutex // serialises refresh
	lastCheck atomic.Int64
	cfgStamp  fileStamp
	lists     map[string][]config.DKIMKey
	files     map[string]*keyFile
	current   atomic.Pointer[map[string][]signingKey]
}

// newKeyring loads the keys of cfg's tenants. When configPath is set, the
// dkim lists are reloaded from that tenants file when it changes. A key
// that cannot be loaded now is an error: a deployment starts with working
// keys or not at all.
func newKeyring(cfg *config.Config, configPath string, interval time.Duration, log *slog.Logger) (*keyring, error) {
	k := &keyring{log: log, configPath: configPath, interval: interval, files: map[string]*keyFile{}, lists: map[string][]config.DKIMKey{}}
	for id, t := range cfg.Tenants {
		k.lists[id] = t.DKIM
	}
	if configPath != "" {
		k.cfgStamp, _ = stampOf(configPath)
	}
	if err := k.load(); err != nil {
		return nil, err
	}
	k.lastCheck.Store(time.Now().UnixNano())
	return k, nil
}

// load (re)reads changed key files and publishes the tenants' keys. It
// returns the first error of a key file; errors are logged when a file's
// state changes, not at every check.
func (k *keyring) load() error {
	var first error
	keys := map[string][]signingKey{}
	seen := map[string]bool{}
	for id, list := range k.lists {
		for _, dk := range list {
			fk := dk.KeyFile + "|" + dk.Algorithm
			seen[fk] = true
			f, changed := k.check(fk, dk)
			if f.err != nil {
				if changed {
					k.log.Error("dkim key unusable", "tenant", id, "domain", dk.Domain, "selector", dk.Selector, "file", dk.KeyFile, "err", f.err, "previous_key_kept", f.key != nil)
				}
				if first == nil {
					first = fmt.Errorf("sender: tenant %s, dkim %s/%s: %w", id, dk.Domain, dk.Selector, f.err)
				}
			}
			if f.key != nil {
				keys[id] = append(keys[id], signingKey{domain: dk.Domain, selector: dk.Selector, algorithm: dk.Algorithm, signer: f.key})
			}
		}
	}
	for fk := range k.files {
		if !seen[fk] {
			delete(k.files, fk) // retired
		}
	}
	k.current.Store(&keys)
	return first
}

// check returns the state of dk's key file (fk is its key in k.files),
// reloading it when its stamp changed since the last check. A file that
// became unreadable or invalid keeps the key it had, so signing goes on
// while the operator fixes it. changed reports a new state.
func (k *keyring) check(fk string, dk config.DKIMKey) (f *keyFile, changed bool) {
	old := k.files[fk]
	st, err := stampOf(dk.KeyFile)
	switch {
	case err == nil && old != nil && old.stamp == st:
		return old, false
	case err != nil && old != nil && old.stamp == (fileStamp{}):
		return old, false // still missing
	}
	f = &keyFile{stamp: st}
	if err != nil {
		f.stamp, f.err = fileStamp{}, fmt.Errorf("%w %s: %v", ErrDKIMKey, dk.KeyFile, err)
	} else {
		f.key, f.err = loadKey(dk.KeyFile, dk.Algorithm)
	}
	switch {
	case f.err != nil && old != nil:
		f.key = old.key
	case f.err == nil && old != nil:
		k.log.Info("dkim key reloaded", "domain", dk.Domain, "selector", dk.Selector, "file", dk.KeyFile)
	}
	k.files[fk] = f
	return f, true
}

// refresh reloads what changed since the last check, at most once per
// interval; a caller that finds another refresh running does not wait.
func (k *keyring) refresh() {
	now := time.Now()
	if now.UnixNano()-k.lastCheck.Load() < int64(k.interval) || !k.mu.TryLock() {
		return
	}
	defer k.mu.Unlock()
	k.lastCheck.Store(now.UnixNano())
	if k.configPath != "" {
		if st, err := stampOf(k.configPath); err == nil && st != k.cfgStamp {
			cfg, err := config.Load(k.configPath)
			if err != nil {
				k.log.Error("tenants file changed but does not load; keeping the DKIM keys in use", "file", k.configPath, "err", err)
			} else {
				k.lists = map[string][]config.DKIMKey{}
				for id, t := range cfg.Tenants {
					k.lists[id] = t.DKIM
				}
				k.log.Info("tenants file reloaded for DKIM keys", "file", k.configPath)
			}
			k.cfgStamp = st
		}
	}
	_ = k.load()
}

// keysFor returns the keys that sign tenant's mail from fromDomain: those
// of the From domain, else of its organisational domain (RFC 7489 §3.2,
// by the public suffix list), so that the signature aligns with From for
// DMARC; else those of the alias domain (or its organisational domain).
// Of the chosen domain's keys, the first RSA and the first Ed25519 key in
// list order sign (RFC 8463 §4: a signer may add an Ed25519 signature to
// its RSA one). It returns nil when the tenant has no key for any of them.
func (k *keyring) keysFor(tenant, fromDomain, aliasDomain string) []signingKey {
	k.refresh()
	all := (*k.current.Load())[tenant]
	if len(all) == 0 {
		return nil
	}
	for _, d := range []string{fromDomain, orgDomain(fromDomain), aliasDomain, orgDomain(aliasDomain)} {
		if d == "" {
			continue
		}
		var out []signingKey
		var rsaDone, edDone bool
		for _, key := range all {
			if key.domain != d {
				continue
			}
			switch {
			case key.algorithm == "rsa" && !rsaDone:
				rsaDone = true
				out = append(out, key)
			case key.algorithm == "ed25519" && !edDone:
				edDone = true
				out = append(out, key)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// describeKeys names the signatures keys make, as "d=… s=… a=…".
func describeKeys(keys []signingKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("d=%s s=%s a=%s-sha256", k.domain, k.selector, k.algorithm))
	}
	return out
}

// orgDomain is domain's organisational domain (RFC 7489 §3.2): its public
// suffix plus one label; "" when it has none.
func orgDomain(domain string) string {
	o, err := publicsuffix.EffectiveTLDPlusOne(domain)
	if err != nil {
		return ""
	}
	return o
}

// fromDomain returns the lower-cased domain of the message's From
// address: the sending address when known, else the header parsed.
func fromDomain(sendingAddress, header string) string {
	addr := sendingAddress
	if addr == "" {
		a, err := mail.ParseAddress(header)
		if err != nil {
			return ""
		}
		addr = a.Address
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(addr[at+1:])
}

// signMessage returns msg with one DKIM-Signature field per key prepended
// (RFC 6376 §5): relaxed/relaxed canonicalisation (§3.4.2, §3.4.4),
// rsa-sha256 (RFC 8301) or ed25519-sha256 (RFC 8463), the header fields
// of signedHeaders that msg has, From, To and Subject over-signed, and
// t= the signing time. keys may be empty: msg is returned as it is.
func signMessage(msg []byte, keys []signingKey) ([]byte, error) {
	if len(keys) == 0 {
		return msg, nil
	}
	hk := headerKeys(msg)
	var sigs []string
	for _, key := range keys {
		s, err := signOne(msg, key, hk)
		if err != nil {
			return nil, err
		}
		sigs = append(sigs, s)
	}
	n := len(msg)
	for _, s := range sigs {
		n += len(s)
	}
	out := make([]byte, 0, n)
	for _, s := range sigs {
		out = append(out, s...)
	}
	return append(out, msg...), nil
}

// signOne returns the DKIM-Signature field of msg by key. Its t= tag
// comes from go-msgauth's own clock (time.Now), which cannot be injected.
func signOne(msg []byte, key signingKey, hk []string) (string, error) {
	s, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 key.domain,
		Selector:               key.selector,
		Signer:                 key.signer,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             hk,
	})
	if err != nil {
		return "", fmt.Errorf("sender: dkim %s/%s: %w", key.domain, key.selector, err)
	}
	if _, err := s.Write(msg); err != nil {
		s.Close()
		return "", fmt.Errorf("sender: dkim %s/%s: %w", key.domain, key.selector, err)
	}
	if err := s.Close(); err != nil {
		return "", fmt.Errorf("sender: dkim %s/%s: %w", key.domain, key.selector, err)
	}
	return s.Signature(), nil
}

// headerKeys is the h= list for msg: each name of signedHeaders as often
// as msg has it, plus once more for the over-signed ones. Nothing is
// repeated by accident, and a field the message lacks is listed only when
// over-signed.
func headerKeys(msg []byte) []string {
	count := map[string]int{}
	hdr, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	for _, line := range bytes.Split(hdr, []byte("\r\n")) {
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if ok {
			count[textproto.CanonicalMIMEHeaderKey(string(bytes.TrimSpace(name)))]++
		}
	}
	var keys []string
	for _, name := range signedHeaders {
		n := count[textproto.CanonicalMIMEHeaderKey(name)]
		if overSigned[name] {
			n++
		}
		for range n {
			keys = append(keys, name)
		}
	}
	return keys
}

// loadKey reads a PEM private key: "RSA PRIVATE KEY" (PKCS#1) or
// "PRIVATE KEY" (PKCS#8, RSA or Ed25519), of the algorithm the dkim entry
// names. An RSA key must have at least 1024 bits (RFC 8301 §3.2).
func loadKey(path, algorithm string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrDKIMKey, path, err)
	}
	return parseKey(data, algorithm)
}

func parseKey(data []byte, algorithm string) (crypto.Signer, error) {
	key, err := dkimkey.ParsePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDKIMKey, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if algorithm != "rsa" {
			return nil, fmt.Errorf("%w: an RSA key where the entry says %s", ErrDKIMKey, algorithm)
		}
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("%w: RSA key of %d bits; at least %d required (RFC 8301 §3.2)", ErrDKIMKey, bits, minRSABits)
		}
		k.Precompute()
		return k, nil
	case ed25519.PrivateKey:
		if algorithm != "ed25519" {
			return nil, fmt.Errorf("%w: an Ed25519 key where the entry says %s", ErrDKIMKey, algorithm)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("%w: unsupported key type %T", ErrDKIMKey, key)
	}
}
