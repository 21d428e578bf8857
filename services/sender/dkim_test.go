package sender

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/dkimkey"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/emersion/go-msgauth/dkim"
)

func testKey(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "dkim", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseKey(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "dkim", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		file, algorithm string
		wantErr         bool
	}{
		{"rsa-pkcs1.pem", "rsa", false},
		{"rsa-pkcs8.pem", "rsa", false},
		{"ed25519-a.pem", "ed25519", false},
		{"rsa-pkcs1.pem", "ed25519", true},
		{"ed25519-a.pem", "rsa", true},
		{"README", "rsa", true},
	}
	for _, tt := range tests {
		_, err := parseKey(read(tt.file), tt.algorithm)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseKey(%s, %s) = %v, want error %v", tt.file, tt.algorithm, err, tt.wantErr)
		}
		if err != nil && !errors.Is(err, ErrDKIMKey) {
			t.Errorf("parseKey(%s, %s) = %v, want it to wrap ErrDKIMKey", tt.file, tt.algorithm, err)
		}
	}
}

func TestHeaderKeys(t *testing.T) {
	msg, err := Render(sampleMail(), renderClock)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(headerKeys(msg), ":")
	want := "From:From:Reply-To:Subject:Subject:Date:To:To:Message-ID:In-Reply-To:References:MIME-Version:Content-Type:Auto-Submitted:X-Auto-Response-Suppress"
	if got != want {
		t.Errorf("headerKeys(sample) = %s, want %s", got, want)
	}
	// A field that occurs twice is listed twice, plus once when over-signed.
	twice := []byte("From: a@x\r\nReceived: x\r\nTo: b@y\r\nTo: c@y\r\nComments: 1\r\n\r\nbody\r\n")
	if got, want := strings.Join(headerKeys(twice), ":"), "From:From:Subject:To:To:To"; got != want {
		t.Errorf("headerKeys(two To) = %s, want %s", got, want)
	}
}

func TestKeysFor(t *testing.T) {
	k := func(domain, selector, alg, file string) config.DKIMKey {
		return config.DKIMKey{Domain: domain, Selector: selector, Algorithm: alg, KeyFile: testKey(t, file)}
	}
	cfg := &config.Config{Tenants: map[string]*config.Tenant{
		"acme": {ID: "acme", AliasDomain: "mail.acme.example", DKIM: []config.DKIMKey{
			k("example.com", "odoo", "rsa", "rsa-pkcs1.pem"),
			k("example.com", "ed", "ed25519", "ed25519-a.pem"),
			k("example.com", "odoo2", "rsa", "rsa-pkcs8.pem"), // added, not switched yet
			k("acme.example", "odoo", "rsa", "rsa-pkcs8.pem"),
			k("shop.example.co.uk", "odoo", "ed25519", "ed25519-b.pem"),
		}},
		"bare": {ID: "bare", AliasDomain: "bare.example"},
	}}
	kr, err := newKeyring(cfg, "", time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tenant, from string
		want         string
	}{
		{"acme", "example.com", "d=example.com s=odoo a=rsa-sha256, d=example.com s=ed a=ed25519-sha256"},
		{"acme", "news.example.com", "d=example.com s=odoo a=rsa-sha256, d=example.com s=ed a=ed25519-sha256"}, // organisational domain
		{"acme", "gmail.com", "d=acme.example s=odoo a=rsa-sha256"},                                            // alias domain's organisational domain
		{"acme", "shop.example.co.uk", "d=shop.example.co.uk s=odoo a=ed25519-sha256"},
		{"acme", "other.example.co.uk", "d=acme.example s=odoo a=rsa-sha256"}, // co.uk is a public suffix: no org match
		{"acme", "", "d=acme.example s=odoo a=rsa-sha256"},
		{"bare", "bare.example", ""},
		{"nobody", "example.com", ""},
	}
	for _, tt := range tests {
		alias := ""
		if tn := cfg.Tenant(tt.tenant); tn != nil {
			alias = tn.AliasDomain
		}
		got := strings.Join(describeKeys(kr.keysFor(tt.tenant, tt.from, alias)), ", ")
		if got != tt.want {
			t.Errorf("keysFor(%s, %q) = %q, want %q", tt.tenant, tt.from, got, tt.want)
		}
	}
}

func TestKeyringRejectsUnusableKeys(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range []struct {
		name string
		key  config.DKIMKey
	}{
		{"missing file", config.DKIMKey{Domain: "example.com", Selector: "odoo", Algorithm: "rsa", KeyFile: "/nonexistent/key.pem"}},
		{"wrong algorithm", config.DKIMKey{Domain: "example.com", Selector: "odoo", Algorithm: "ed25519", KeyFile: testKey(t, "rsa-pkcs1.pem")}},
	} {
		cfg := &config.Config{Tenants: map[string]*config.Tenant{"acme": {ID: "acme", AliasDomain: "example.com", DKIM: []config.DKIMKey{tt.key}}}}
		if _, err := newKeyring(cfg, "", time.Hour, log); !errors.Is(err, ErrDKIMKey) {
			t.Errorf("newKeyring(%s) = %v, want ErrDKIMKey", tt.name, err)
		}
	}
}

// dkimZone is the DNS a DKIM test serves: one TXT record per published
// selector, kept as a map for python3-dkim's dnsfunc too.
type dkimZone struct {
	t       *testing.T
	dns     *testenv.DNSServer
	records map[string]string // name without the final dot → TXT value
}

func newDKIMZone(t *testing.T) *dkimZone {
	return &dkimZone{t: t, dns: testenv.DNS(t), records: map[string]string{}}
}

// publish sets the records of the given "selector._domainkey.domain" →
// key file pairs, replacing every earlier record.
func (z *dkimZone) publish(keys map[string]string) {
	z.t.Helper()
	z.records = map[string]string{}
	var rrs []string
	for name, file := range keys {
		key, err := dkimkey.Load(file)
		if err != nil {
			z.t.Fatal(err)
		}
		rec, err := dkimkey.Record(key.Public())
		if err != nil {
			z.t.Fatal(err)
		}
		z.records[name] = rec
		rrs = append(rrs, fmt.Sprintf("%s. 300 IN TXT %s", name, zoneTXT(rec)))
	}
	z.dns.Set(rrs...)
}

// zoneTXT writes value as TXT character-strings of at most 255 octets
// (RFC 1035 §3.3.14); a 2048-bit RSA record needs two.
func zoneTXT(value string) string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, value[:255])
		value = value[255:]
	}
	parts = append(parts, value)
	return `"` + strings.Join(parts, `" "`) + `"`
}

// lookup answers TXT questions from the zone's DNS server through
// platform/resolver.
func (z *dkimZone) lookup(name string) ([]string, error) {
	txt, _, err := resolver.New([]string{z.dns.Addr()}, 2*time.Second).TXT(context.Background(), name)
	return txt, err
}

// verifyGo verifies msg with go-msgauth, looking keys up in the zone's
// DNS server through platform/resolver, and returns "d s a" per
// signature. Every signature must verify.
func (z *dkimZone) verifyGo(msg []byte) []string {
	z.t.Helper()
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: z.lookup})
	if err != nil {
		z.t.Fatalf("go-msgauth: %v", err)
	}
	var out []string
	for _, v := range verifs {
		if v.Err != nil {
			z.t.Errorf("go-msgauth: signature d=%s does not verify: %v\n%s", v.Domain, v.Err, msg)
			continue
		}
		out = append(out, v.Domain)
	}
	return out
}

// verifyPy verifies every signature of msg with Debian's python3-dkim
// (dkimpy), an implementation independent of go-msgauth, handing it the
// zone's records through dnsfunc so it never asks real DNS. It returns
// "d=… s=… a=…" per signature.
func (z *dkimZone) verifyPy(msg []byte) []string {
	z.t.Helper()
	got, err := z.tryPy(msg)
	if err != nil {
		z.t.Errorf("%v\nmessage:\n%s", err, msg)
	}
	return got
}

func (z *dkimZone) tryPy(msg []byte) ([]string, error) {
	py := pythonWithDKIM(z.t)
	recs, _ := json.Marshal(z.records)
	cmd := exec.Command(py, "-c", dkimpyScript, string(recs))
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("python3-dkim does not verify the message: %v\n%s", err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n"), nil
}

const dkimpyScript = `
import json, sys
import dkim, dkim.util
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    value = records.get(name.rstrip('.').lower())
    return value.encode() if value is not None else None
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg, minkey=1024)
sigs = [v for k, v in d.headers if k.lower() == b'dkim-signature']
if not sigs:
    print('no DKIM-Signature field')
    sys.exit(2)
ok = True
for i, sig in enumerate(sigs):
    tags = dkim.util.parse_tag_value(b''.join(sig.split()))
    desc = 'd=%s s=%s a=%s' % (tags[b'd'].decode(), tags[b's'].decode(), tags[b'a'].decode())
    if d.verify(idx=i, dnsfunc=dnsfunc):
        print(desc)
    else:
        print('FAIL ' + desc)
        ok = False
sys.exit(0 if ok else 1)
`

// pythonWithDKIM returns a python3 that can import dkim. A missing
// python3-dkim fails the test: it is a dependency of the suite (.ci/run
// installs it), never a reason to skip.
func pythonWithDKIM(t testing.TB) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		if exec.Command(p, "-c", "import dkim, nacl").Run() == nil {
			return p
		}
	}
	t.Fatalf("python3-dkim is required to verify DKIM independently (apt-get install python3-dkim); tried %v", candidates)
	return ""
}

// dkimTenants is a tenants file whose tenant acme sends through relay and
// lists the given dkim entries.
func dkimTenants(relayAddr string, keys ...config.DKIMKey) string {
	s := tenantsYAML(serverYAML("relay", relayAddr, "none", false))
	s = strings.Replace(s, "  solo:\n", "    dkim:\n"+dkimYAML(keys)+"  solo:\n", 1)
	return s
}

func dkimYAML(keys []config.DKIMKey) string {
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "      - {domain: %s, selector: %s, algorithm: %s, key_file: %s}\n", k.Domain, k.Selector, k.Algorithm, k.KeyFile)
	}
	return b.String()
}

// TestDKIMSignsAndRotates delivers mail signed with RSA-2048 and Ed25519,
// checks both signatures with go-msgauth (keys from an in-process DNS
// server) and with python3-dkim, then rotates keys by editing files only
// (add a selector, switch, retire; replace a key file in place) and
// checks again after each step.
func TestDKIMSignsAndRotates(t *testing.T) {
	capture := listen(t)
	zone := newDKIMZone(t)
	dir := t.TempDir()
	rsa1, rsa2 := testKey(t, "rsa-pkcs1.pem"), testKey(t, "rsa-pkcs8.pem")
	ed := filepath.Join(dir, "ed25519.pem") // rewritten in place below
	copyFile(t, testKey(t, "ed25519-a.pem"), ed)

	odoo := config.DKIMKey{Domain: "example.com", Selector: "odoo", Algorithm: "rsa", KeyFile: rsa1}
	odoo2 := config.DKIMKey{Domain: "example.com", Selector: "odoo2", Algorithm: "rsa", KeyFile: rsa2}
	edKey := config.DKIMKey{Domain: "example.com", Selector: "odoo-ed25519", Algorithm: "ed25519", KeyFile: ed}
	tenantsPath := filepath.Join(dir, "tenants.yaml")
	writeTenants := func(keys ...config.DKIMKey) {
		t.Helper()
		writeFileAtomic(t, tenantsPath, dkimTenants(capture.Addr(), keys...))
	}
	writeTenants(odoo, edKey)
	zone.publish(map[string]string{
		"odoo._domainkey.example.com":         rsa1,
		"odoo-ed25519._domainkey.example.com": ed,
	})
	h := start(t, dkimTenants(capture.Addr(), odoo, edKey), Options{ConfigPath: tenantsPath, KeyCheckInterval: time.Millisecond})

	n := 0
	send := func(step string, want ...string) {
		t.Helper()
		n++
		id := fmt.Sprintf("m-dkim-%d", n)
		h.publish(readyMail(id, "relay"), id+":quota")
		ev := h.next(cmv1.Outcome_OUTCOME_DELIVERED)
		msgs := capture.Messages()
		raw := msgs[len(msgs)-1].Raw
		if got := zone.verifyGo(raw); len(got) != len(want) {
			t.Errorf("%s: go-msgauth verified %d signatures (%v), want %d", step, len(got), got, len(want))
		}
		got := zone.verifyPy(raw)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: python3-dkim verified %q, want %q", step, got, want)
		}
		for _, w := range want {
			if !strings.Contains(ev.GetReason(), w) {
				t.Errorf("%s: delivered reason %q lacks %q", step, ev.GetReason(), w)
			}
		}
		sig := raw[:bytes.Index(raw, []byte("\r\nFrom:"))]
		for _, tag := range []string{"c=relaxed/relaxed", "h=From:From:Reply-To:Subject:Subject:Date:To:To:Message-ID"} {
			if !bytes.Contains(bytes.Join(bytes.Fields(sig), nil), []byte(strings.ReplaceAll(tag, " ", ""))) {
				t.Errorf("%s: signature lacks %s:\n%s", step, tag, sig)
			}
		}
	}
	const (
		rsaOdoo  = "d=example.com s=odoo a=rsa-sha256"
		rsaOdoo2 = "d=example.com s=odoo2 a=rsa-sha256"
		edSig    = "d=example.com s=odoo-ed25519 a=ed25519-sha256"
	)
	send("initial keys", rsaOdoo, edSig)

	// 1. Add odoo2 after odoo and publish it: odoo still signs.
	zone.publish(map[string]string{
		"odoo._domainkey.example.com":         rsa1,
		"odoo2._domainkey.example.com":        rsa2,
		"odoo-ed25519._domainkey.example.com": ed,
	})
	writeTenants(odoo, edKey, odoo2)
	send("odoo2 added", rsaOdoo, edSig)

	// 2. Switch: odoo2 first.
	writeTenants(odoo2, edKey, odoo)
	send("switched to odoo2", rsaOdoo2, edSig)

	// 3. Retire odoo, from the tenants file and from DNS.
	writeTenants(odoo2, edKey)
	zone.publish(map[string]string{
		"odoo2._domainkey.example.com":        rsa2,
		"odoo-ed25519._domainkey.example.com": ed,
	})
	send("odoo retired", rsaOdoo2, edSig)

	// 4. Rekey the Ed25519 selector in place: new file content, new record.
	copyFile(t, testKey(t, "ed25519-b.pem"), ed)
	zone.publish(map[string]string{
		"odoo2._domainkey.example.com":        rsa2,
		"odoo-ed25519._domainkey.example.com": ed,
	})
	send("ed25519 key file replaced", rsaOdoo2, edSig)
	if logs := h.logs.String(); !strings.Contains(logs, "dkim key reloaded") || !strings.Contains(logs, "tenants file reloaded") {
		t.Errorf("log lacks the reloads:\n%s", logs)
	}

	// A broken key file keeps the key in use.
	writeFileAtomic(t, ed, "not a key\n")
	send("ed25519 key file broken", rsaOdoo2, edSig)
}

// TestDKIMAlignment: a From on a domain the tenant has no key for is
// signed with the alias domain's key; one on a sub-domain of a keyed
// domain with the organisational domain's key.
func TestDKIMAlignment(t *testing.T) {
	capture := listen(t)
	zone := newDKIMZone(t)
	ed := testKey(t, "ed25519-a.pem")
	rsa1 := testKey(t, "rsa-pkcs1.pem")
	zone.publish(map[string]string{
		"odoo._domainkey.example.com": ed,
		"odoo._domainkey.brand.test":  rsa1,
	})
	h := start(t, dkimTenants(capture.Addr(),
		config.DKIMKey{Domain: "example.com", Selector: "odoo", Algorithm: "ed25519", KeyFile: ed},
		config.DKIMKey{Domain: "brand.test", Selector: "odoo", Algorithm: "rsa", KeyFile: rsa1},
	), Options{})
	for i, tt := range []struct {
		from string
		want string
	}{
		{"Bob <bob@news.brand.test>", "d=brand.test s=odoo a=rsa-sha256"},
		{"Alice <alice@gmail.com>", "d=example.com s=odoo a=ed25519-sha256"},
	} {
		m := readyMail(fmt.Sprintf("m-align-%d", i), "relay")
		m.From.Header, m.From.SendingAddress = tt.from, ""
		h.publish(m, m.GetMailId()+":quota")
		h.next(cmv1.Outcome_OUTCOME_DELIVERED)
		msgs := capture.Messages()
		raw := msgs[len(msgs)-1].Raw
		zone.verifyGo(raw)
		if got := zone.verifyPy(raw); len(got) != 1 || got[0] != tt.want {
			t.Errorf("From %s: signatures %q, want %q", tt.from, got, tt.want)
		}
		// The verifiers are not vacuous: a changed Subject or an added
		// To (over-signed) breaks the signature.
		for _, tamper := range [][2]string{{"\r\nSubject: ", "\r\nSubject: FW: "}, {"\r\nTo: ", "\r\nTo: eve@example.net\r\nTo: "}} {
			bad := bytes.Replace(raw, []byte(tamper[0]), []byte(tamper[1]), 1)
			if bytes.Equal(bad, raw) {
				t.Fatalf("tampering %q changed nothing", tamper[0])
			}
			if got, err := zone.tryPy(bad); err == nil {
				t.Errorf("python3-dkim verified a message with %q: %q", tamper[1], got)
			}
			verifs, err := dkim.VerifyWithOptions(bytes.NewReader(bad), &dkim.VerifyOptions{LookupTXT: zone.lookup})
			if err != nil || len(verifs) != 1 || verifs[0].Err == nil {
				t.Errorf("go-msgauth on a message with %q = %v, %v; want one failed verification", tamper[1], verifs, err)
			}
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, to, string(b))
}

// writeFileAtomic replaces path by a new file, as a configuration
// management tool (or a Kubernetes secret update) does, and makes sure
// its modification time differs from the old file's.
func writeFileAtomic(t *testing.T, path, content string) {
	t.Helper()
	old, _ := os.Stat(path)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if old != nil {
		mt := old.ModTime().Add(time.Second)
		_ = os.Chtimes(tmp, mt, mt)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
