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

	"github.com/chattermail/chattermail/platform/proc"
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := proc.Start(ctx, "rewrite", ps, stdout)
	if err != nil {
		return err
	}
	svc, err := rewrite.New(rewrite.Options{Bus: p.Bus, Config: p.Config, Log: p.Log, Workers: *workers})
	if err != nil {
		return err
	}
	return p.Run(ctx, svc.Run)
}
