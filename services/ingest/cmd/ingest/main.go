// Command ingest runs the ingest stage: the public HTTP API (posts,
// threads and followers, mail status, the suppression list, one-click
// unsubscribe), the api.post.<tenant> responder, the consumer of
// chatter.post.<tenant> that fans each post out into one mail per
// recipient, the projector of mail status timelines, and, with
// -smtp-addr, the inbound SMTP server for replies and bounces with its
// router (package inbound). Settings come
// from flags, whose defaults come from the environment (see -h).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/chattermail/chattermail/platform/admin"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/replytoken"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/chattermail/chattermail/services/ingest/inbound"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	var ps proc.Settings
	ps.Register(fs, getenv, "127.0.0.1:9091")
	httpAddr := fs.String("http-addr", proc.Env(getenv, "HTTP_ADDR", "127.0.0.1:8080"), "public HTTP API listen address (HTTP_ADDR)")
	workers := fs.Int("workers", 4, "posts fanned out at once")
	maxBody := fs.Int64("max-body-bytes", 1<<20, "largest HTTP request body accepted")
	publicURL := fs.String("public-url", proc.Env(getenv, "PUBLIC_URL", ingest.DefaultPublicURL), "base URL of this API as seen from the Internet, for the unsubscribe links in mail; https in production (PUBLIC_URL)")
	smtpAddr := fs.String("smtp-addr", getenv("SMTP_ADDR"), "inbound SMTP listen address for replies and bounces, for example :25; empty disables inbound SMTP (SMTP_ADDR)")
	smtpCert := fs.String("smtp-tls-cert", getenv("SMTP_TLS_CERT_FILE"), "PEM certificate offered with STARTTLS on inbound SMTP (SMTP_TLS_CERT_FILE)")
	smtpKey := fs.String("smtp-tls-key", getenv("SMTP_TLS_KEY_FILE"), "PEM key of -smtp-tls-cert (SMTP_TLS_KEY_FILE)")
	smtpMax := fs.Int64("smtp-max-bytes", inbound.DefaultMaxMessageBytes, "largest inbound message accepted; larger ones get 552")
	smtpHost := fs.String("smtp-hostname", proc.Env(getenv, "SMTP_HOSTNAME", "localhost"), "name in the inbound SMTP greeting and Received fields (SMTP_HOSTNAME)")
	tokenKeys := fs.String("reply-token-keys", getenv(replytoken.EnvKeysFile), "file of reply/VERP token keys shared with rewrite; empty uses the PUBLIC development key (REPLY_TOKEN_KEYS_FILE)")
	maxPerSender := fs.Int("inbound-max-per-sender", 20, "inbound messages one sender may send a tenant per -inbound-sender-window; the rest is dropped (mail-rules §7)")
	senderWindow := fs.Duration("inbound-sender-window", 120*time.Minute, "window of -inbound-max-per-sender")
	dnsServers := fs.String("dns", getenv("DNS_SERVERS"), "DNS servers for SPF, DKIM and DMARC checks of inbound replies, comma-separated host:port; empty uses /etc/resolv.conf (DNS_SERVERS)")
	keyFile := fs.String("unsubscribe-key-file", getenv("UNSUBSCRIBE_KEY_FILE"), "file holding the key (32 bytes or more) that signs unsubscribe links; empty uses a public development key (UNSUBSCRIBE_KEY_FILE)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	unsubscribeKey, err := ingest.LoadUnsubscribeKey(*keyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("http port: %w", err)
	}
	p, err := proc.Start(ctx, "ingest", ps, stdout)
	if err != nil {
		_ = ln.Close()
		return err
	}
	svc, err := ingest.New(ingest.Options{Bus: p.Bus, Config: p.Config, Log: p.Log, Workers: *workers, MaxBodyBytes: *maxBody,
		KVReplicas: ps.StreamReplicas, PublicURL: *publicURL, UnsubscribeKey: unsubscribeKey})
	if err != nil {
		_ = ln.Close()
		p.Bus.Close()
		return err
	}
	tlsConfig, err := inbound.LoadTLS(*smtpCert, *smtpKey)
	if err != nil {
		_ = ln.Close()
		return err
	}
	tokens, err := replytoken.Open(*tokenKeys, p.Log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	dns, err := resolver.FromList(*dnsServers, 0)
	if err != nil {
		_ = ln.Close()
		return err
	}
	var smtpLn net.Listener
	if *smtpAddr != "" {
		if smtpLn, err = net.Listen("tcp", *smtpAddr); err != nil {
			_ = ln.Close()
			return fmt.Errorf("smtp port: %w", err)
		}
	}
	in, err := inbound.Open(ctx, inbound.Options{Bus: p.Bus, Config: p.Config, Tokens: tokens, Log: p.Log, Threads: svc.Threads(),
		Suppression: svc.Suppression(), KVReplicas: ps.StreamReplicas, Listener: smtpLn, Hostname: *smtpHost,
		MaxMessageBytes: *smtpMax, TLSConfig: tlsConfig,
		Router: inbound.RouterOptions{Auth: &inbound.Authenticator{DNS: dns, ServID: *smtpHost}, Counter: inbound.NewMetrics(p.Registry),
			MaxPerSender: *maxPerSender, SenderWindow: *senderWindow}})
	if err != nil {
		_ = ln.Close()
		return err
	}
	p.Log.Info("serving the HTTP API", "addr", ln.Addr().String())
	return p.Run(ctx, svc.Run, in.Run, func(ctx context.Context) error {
		return admin.Serve(ctx, ln, svc.Handler(), p.Log)
	})
}
