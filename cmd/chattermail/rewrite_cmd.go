package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/services/rewrite"
)

const rewriteUsage = "rewrite: usage: chattermail rewrite explain --config FILE --tenant T --author 'Name <addr>' [--dns host:port]"

// runRewrite is "chattermail rewrite explain": it prints, as JSON, the
// From header, sending address, envelope sender, server, rule and reason
// the rewrite stage would choose for a mail by an author. It compiles the
// tenants file and decides through rewrite.Rewriter, exactly as the stage
// does, DMARC lookup included (on DNS_SERVERS, or /etc/resolv.conf).
func runRewrite(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "explain" {
		return errors.New(rewriteUsage)
	}
	fs := flag.NewFlagSet("rewrite explain", flag.ContinueOnError)
	fs.SetOutput(stdout)
	cfgPath := fs.String("config", proc.Env(getenv, "CHATTERMAIL_CONFIG", "chattermail.yaml"), "tenants file (CHATTERMAIL_CONFIG)")
	tenant := fs.String("tenant", "", "tenant id (required)")
	author := fs.String("author", "", `author address, with or without display name: 'Bob <bob@example.com>' (required)`)
	dnsServers := fs.String("dns", getenv("DNS_SERVERS"), "DNS servers for the DMARC lookup, comma-separated host:port; empty uses /etc/resolv.conf (DNS_SERVERS)")
	dnsTimeout := fs.Duration("dns-timeout", 5*time.Second, "timeout of one DNS question")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *tenant == "" || *author == "" || fs.NArg() > 0 {
		return errors.New(rewriteUsage)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	res, err := rewrite.NewResolver(*dnsServers, *dnsTimeout)
	if err != nil {
		return err
	}
	rw, err := rewrite.NewRewriter(cfg, rewrite.NewDMARCPolicies(res, rewrite.DMARCOptions{}), nil)
	if err != nil {
		return err
	}
	e, err := rw.Explain(ctx, *tenant, *author)
	if err != nil {
		return fmt.Errorf("rewrite explain: %w", err)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(e)
}
