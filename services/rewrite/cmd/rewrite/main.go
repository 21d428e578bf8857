// Command rewrite runs the rewrite stage: it decides each mail's From,
// server, envelope and Reply-To. Settings come from flags, whose defaults
// come from the environment (see -h).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/replytoken"
	"github.com/chattermail/chattermail/services/rewrite"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "rewrite:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("rewrite", flag.ContinueOnError)
	var ps proc.Settings
	ps.Register(fs, getenv, "127.0.0.1:9092")
	workers := fs.Int("workers", 4, "mails rewritten at once")
	keysFile := fs.String("reply-token-keys", getenv(replytoken.EnvKeysFile),
		"file of reply/VERP token keys, \"<key id> <base64 key>\" per line, the first signs; empty uses the PUBLIC development key (REPLY_TOKEN_KEYS_FILE)")
	dnsServers := fs.String("dns", getenv("DNS_SERVERS"), "DNS servers for DMARC lookups, comma-separated host:port; empty uses /etc/resolv.conf (DNS_SERVERS)")
	dnsTimeout := fs.Duration("dns-timeout", 5*time.Second, "timeout of one DNS question")
	dnsAttempts := fs.Int("dns-attempts", rewrite.DefaultDNSAttempts, "deliveries of a mail that may wait for a failing DMARC lookup before it is sent as the notification address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, err := rewrite.NewResolver(*dnsServers, *dnsTimeout)
	if err != nil {
		return err
	}
	p, err := proc.Start(ctx, "rewrite", ps, stdout)
	if err != nil {
		return err
	}
	keys, err := replytoken.Open(*keysFile, p.Log)
	if err != nil {
		return err
	}
	svc, err := rewrite.New(rewrite.Options{Bus: p.Bus, Config: p.Config, Log: p.Log, Workers: *workers,
		Resolver: res, Tokens: keys, DNSAttempts: *dnsAttempts})
	if err != nil {
		return err
	}
	return p.Run(ctx, svc.Run)
}
