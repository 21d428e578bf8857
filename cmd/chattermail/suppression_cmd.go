package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/services/ingest/suppression"
)

const suppressionUsage = `usage:
  chattermail suppression list  --tenant T                 the tenant's suppressed addresses
  chattermail suppression add   --tenant T --address A [--reason R]
  chattermail suppression clear --tenant T [--address A]   remove one address, or all of them

Every subcommand talks to the suppression list in NATS JetStream KV
(bucket "suppression") directly (--nats-url, NATS_URL), the one list that
inbound bounces write and fan-out reads, so it works whether the services
run or not.
`

// runSuppression is "chattermail suppression list|add|clear".
func runSuppression(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	sub, done, err := subcommand("suppression", args, suppressionUsage, stdout, "list", "add", "clear")
	if done {
		return err
	}
	fs := flag.NewFlagSet("suppression "+sub, flag.ContinueOnError)
	fs.SetOutput(stdout)
	natsURL := fs.String("nats-url", proc.Env(getenv, "NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL (NATS_URL)")
	tenant := fs.String("tenant", "", "tenant id (required)")
	address := fs.String("address", "", "the address (add: required; clear: one address instead of all)")
	reason := fs.String("reason", "added by an operator", "add: why")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("suppression %s: unexpected argument %q", sub, fs.Arg(0))
	case *tenant == "":
		return fmt.Errorf("suppression %s: --tenant is required", sub)
	case sub == "add" && *address == "":
		return errors.New("suppression add: --address is required")
	case sub == "list" && *address != "":
		return errors.New("suppression list: --address belongs to add and clear")
	}
	if err := bus.ValidTenant(*tenant); err != nil {
		return fmt.Errorf("suppression: %w", err)
	}
	b, err := bus.Connect(*natsURL, "chattermail-suppression", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	l, err := suppression.Open(ctx, b.JetStream(), suppression.Options{})
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		es, err := l.Entries(ctx, *tenant)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ADDRESS\tSOURCE\tADDED\tREASON")
		for _, e := range es {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Address, e.Source, e.AddedAt.Format(time.RFC3339), e.Reason)
		}
		return w.Flush()
	case "add":
		e, created, err := l.Suppress(ctx, *tenant, *address, *reason, "operator")
		if err != nil {
			return err
		}
		if created {
			fmt.Fprintf(stdout, "suppressed %s for tenant %s\n", e.Address, *tenant)
		} else {
			fmt.Fprintf(stdout, "%s was already suppressed since %s (%s)\n", e.Address, e.AddedAt.Format(time.RFC3339), e.Reason)
		}
		return nil
	}
	if *address != "" {
		if err := l.Unsuppress(ctx, *tenant, *address); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s from tenant %s's suppression list\n", *address, *tenant)
		return nil
	}
	es, err := l.Entries(ctx, *tenant)
	if err != nil {
		return err
	}
	for _, e := range es {
		if err := l.Unsuppress(ctx, *tenant, e.Address); err != nil && !errors.Is(err, suppression.ErrNotSuppressed) {
			return err
		}
	}
	fmt.Fprintf(stdout, "removed %d addresses from tenant %s's suppression list\n", len(es), *tenant)
	return nil
}
