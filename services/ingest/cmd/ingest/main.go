// Command ingest runs the ingest stage: the public HTTP API (posts,
// threads and followers, mail status, the suppression list, one-click
// unsubscribe), the api.post.<tenant> responder, the consumer of
// chatter.post.<tenant> that fans each post out into one mail per
// recipient, and the projector of mail status timelines. Settings come
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

	"github.com/chattermail/chattermail/platform/admin"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/services/ingest"
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
	p.Log.Info("serving the HTTP API", "addr", ln.Addr().String())
	return p.Run(ctx, svc.Run, func(ctx context.Context) error {
		return admin.Serve(ctx, ln, svc.Handler(), p.Log)
	})
}
