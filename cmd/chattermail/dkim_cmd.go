package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/dkimkey"
)

// runDKIM is "chattermail dkim keygen".
func runDKIM(_ context.Context, args []string, _ func(string) string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "keygen" {
		return errors.New("dkim: usage: chattermail dkim keygen --domain D [--selector odoo] [--algorithm rsa2048|ed25519] --out DIR")
	}
	fs := flag.NewFlagSet("dkim keygen", flag.ContinueOnError)
	fs.SetOutput(stdout)
	domain := fs.String("domain", "", "signing domain, for example example.com (required)")
	selector := fs.String("selector", config.DefaultDKIMSelector, "selector: the key is published at <selector>._domainkey.<domain>")
	algorithm := fs.String("algorithm", dkimkey.RSA2048, "rsa2048 or ed25519")
	out := fs.String("out", "", "folder for the private key file (required)")
	delegate := fs.String("delegate-to", "", "optional provider zone to delegate the selector to with a CNAME, for example dkim.provider.net")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	*domain = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(*domain)), ".")
	if *domain == "" || *out == "" {
		return errors.New("dkim keygen: --domain and --out are required")
	}
	key, err := dkimkey.Generate(*algorithm)
	if err != nil {
		return err
	}
	pemBytes, err := dkimkey.EncodePEM(key)
	if err != nil {
		return err
	}
	record, err := dkimkey.Record(key.Public())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("dkim keygen: %w", err)
	}
	path := filepath.Join(*out, fmt.Sprintf("%s.%s.pem", *domain, *selector))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("dkim keygen: %w (an existing key is never overwritten)", err)
	}
	if _, err := f.Write(pemBytes); err != nil {
		f.Close()
		return fmt.Errorf("dkim keygen: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dkim keygen: %w", err)
	}
	alg := "rsa"
	if *algorithm == dkimkey.Ed25519 {
		alg = "ed25519"
	}
	name := *selector + "._domainkey." + *domain + "."
	fmt.Fprintf(stdout, "Private key written to %s (keep it secret; mount it as a secret in production).\n\n", path)
	fmt.Fprintf(stdout, "Publish this DNS record:\n\n%s\n\n", dkimkey.ZoneLines(name, record))
	if *delegate != "" {
		target := fmt.Sprintf("%s-%s._domainkey.%s.", *selector, strings.ReplaceAll(*domain, ".", "-"), strings.TrimSuffix(*delegate, "."))
		fmt.Fprintf(stdout, "Or, to let %s host the key, publish this CNAME and have them serve the TXT record above at its target:\n\n%s IN CNAME %s\n\n", *delegate, name, target)
	}
	fmt.Fprintf(stdout, "Then add the key to the tenant in the tenants file:\n\n    dkim:\n      - domain: %s\n        selector: %s\n        algorithm: %s\n        key_file: %s\n", *domain, *selector, alg, path)
	return nil
}
