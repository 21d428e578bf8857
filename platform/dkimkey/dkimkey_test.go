package dkimkey

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func TestGenerateEncodeParseRecord(t *testing.T) {
	for _, alg := range []string{RSA2048, Ed25519} {
		k, err := Generate(alg)
		if err != nil {
			t.Fatalf("Generate(%s) = %v", alg, err)
		}
		p, err := EncodePEM(k)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePEM(p)
		if err != nil {
			t.Fatalf("ParsePEM(EncodePEM(%s key)) = %v", alg, err)
		}
		r1, _ := Record(k.Public())
		r2, _ := Record(back.Public())
		if r1 != r2 || !strings.HasPrefix(r1, "v=DKIM1; k=") || PublicKeyOf(r1) == "" {
			t.Errorf("%s: record %q after a PEM round trip is %q", alg, r1, r2)
		}
	}
	if _, err := Generate("dsa"); err == nil {
		t.Error(`Generate("dsa") = nil error, want one`)
	}
}

func TestParsePKCS1(t *testing.T) {
	k, err := Generate(RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	p := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.(*rsa.PrivateKey))})
	if _, err := ParsePEM(p); err != nil {
		t.Errorf("ParsePEM(PKCS#1) = %v, want nil", err)
	}
	if _, err := ParsePEM([]byte("not pem")); err == nil {
		t.Error("ParsePEM(garbage) = nil error, want one")
	}
}

func TestZoneLinesSplitsLongRecords(t *testing.T) {
	long := strings.Repeat("a", 600)
	got := ZoneLines("x._domainkey.example.com.", long)
	if strings.Count(got, `"`) != 6 {
		t.Errorf("ZoneLines(600 octets) = %q, want three quoted strings", got)
	}
	if got := ZoneLines("n.", "short"); got != `n. IN TXT "short"` {
		t.Errorf(`ZoneLines("short") = %q, want n. IN TXT "short"`, got)
	}
	if got := PublicKeyOf("v=DKIM1; k=rsa; p=AB CD"); got != "ABCD" {
		t.Errorf("PublicKeyOf = %q, want ABCD", got)
	}
	if got := PublicKeyOf("v=DKIM1; p="); got != "" {
		t.Errorf("PublicKeyOf(revoked) = %q, want empty", got)
	}
}
