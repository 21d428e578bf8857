// Package dkimkey makes, reads and publishes DKIM keys: PEM private keys
// (PKCS#8 written; PKCS#1 and PKCS#8 read) and the DNS TXT record that
// publishes the public half (RFC 6376 §3.6.1, RFC 8463 for Ed25519).
package dkimkey

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Algorithms accepted by Generate.
const (
	RSA2048 = "rsa2048"
	Ed25519 = "ed25519"
)

// Generate returns a new private key: RSA-2048 (the default, for "" or
// RSA2048) or Ed25519.
func Generate(algorithm string) (crypto.Signer, error) {
	switch algorithm {
	case "", RSA2048, "rsa":
		return rsa.GenerateKey(rand.Reader, 2048)
	case Ed25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("dkimkey: algorithm %q must be %s or %s", algorithm, RSA2048, Ed25519)
}

// EncodePEM returns key as a PKCS#8 "PRIVATE KEY" PEM block.
func EncodePEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("dkimkey: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePEM reads an RSA or Ed25519 private key from the first PKCS#8
// ("PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY") PEM block of data; other
// blocks (parameters, certificates) are skipped.
func ParsePEM(data []byte) (crypto.Signer, error) {
	var block *pem.Block
	for {
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("dkimkey: no PEM private key found")
		}
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			break
		}
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("dkimkey: %w", err)
		}
		return k, nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("dkimkey: %w", err)
		}
		switch k := k.(type) {
		case *rsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("dkimkey: unsupported key type %T", k)
	}
	return nil, fmt.Errorf("dkimkey: PEM block %q; want RSA PRIVATE KEY (PKCS#1) or PRIVATE KEY (PKCS#8)", block.Type)
}

// Load reads a private key file.
func Load(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dkimkey: %w", err)
	}
	k, err := ParsePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return k, nil
}

// Record returns the TXT record value publishing pub, for example
// "v=DKIM1; k=rsa; p=MIIBIjANBg...". RSA keys are published as
// SubjectPublicKeyInfo (RFC 6376 §3.6.1), Ed25519 keys as the raw 32
// bytes (RFC 8463 §4.2).
func Record(pub crypto.PublicKey) (string, error) {
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", fmt.Errorf("dkimkey: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	}
	return "", fmt.Errorf("dkimkey: unsupported public key %T", pub)
}

// PublicKeyOf returns the p= value of a DKIM record, or "" when the record
// has none (a revoked key has an empty p=).
func PublicKeyOf(record string) string {
	for _, tag := range strings.Split(record, ";") {
		k, v, ok := strings.Cut(tag, "=")
		if ok && strings.TrimSpace(k) == "p" {
			return strings.Join(strings.Fields(v), "")
		}
	}
	return ""
}

// ZoneLines renders a TXT record for name in zone-file syntax, splitting
// the value into strings of at most 255 octets (RFC 1035 §3.3.14), which
// DKIM verifiers join again (RFC 6376 §3.6.2.2).
func ZoneLines(name, value string) string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, `"`+value[:255]+`"`)
		value = value[255:]
	}
	parts = append(parts, `"`+value+`"`)
	if len(parts) == 1 {
		return name + " IN TXT " + parts[0]
	}
	return name + " IN TXT ( " + strings.Join(parts, "\n\t") + " )"
}
