// Command chattermail is the local entry point to chattermail: the
// all-in-one development system and the operator tools.
//
//	chattermail dev       every service in one process, an embedded NATS
//	                      server, a local SMTP capture (see -h)
//	chattermail rewrite   explain the From decision for an author
//	chattermail quota     show and change tenants' daily limits
//	chattermail suppression  list, add and clear suppressed addresses
//	chattermail dkim      make DKIM keys and the records to publish
//	chattermail domain    check SPF, DKIM, DMARC and MX of the tenants
//	chattermail mail-test grade a sample notification like a mail tester
//	chattermail version   print the version
//
// The services also ship as separate programs (services/*/cmd/*) for
// production, where each runs as its own deployment.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chattermail:", err)
		os.Exit(1)
	}
}

const usage = `usage: chattermail <command> [flags]

commands:
  dev       run every service in one process with an embedded NATS server
            and a local SMTP capture
  rewrite   explain: print the From, envelope and server chosen for an author
  quota     set, status: show and change a tenant's daily limit
  suppression  list, add, clear: a tenant's suppressed addresses
  dkim      keygen: make a DKIM key and print the DNS record to publish
  domain    check: SPF, DKIM, DMARC and MX of each tenant, with fixes
  mail-test send a sample notification through the pipeline and grade it
  version   print the version

Run "chattermail <command> -h" for a command's flags.
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return fmt.Errorf("no command")
	}
	switch args[0] {
	case "dev":
		return runDev(ctx, args[1:], getenv, stdout)
	case "rewrite":
		return runRewrite(ctx, args[1:], getenv, stdout)
	case "quota":
		return runQuota(ctx, args[1:], getenv, stdout)
	case "suppression":
		return runSuppression(ctx, args[1:], getenv, stdout)
	case "dkim":
		return runDKIM(ctx, args[1:], getenv, stdout)
	case "domain":
		return runDomain(ctx, args[1:], getenv, stdout)
	case "mail-test":
		return runMailTest(ctx, args[1:], getenv, stdout)
	case "version":
		fmt.Fprintln(stdout, "chattermail", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stdout, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// subcommand picks the subcommand of a command such as "quota status":
// args[0] must be one of valid. "help" prints usage and reports done; no
// or an unknown subcommand prints usage and is an error.
func subcommand(command string, args []string, usage string, stdout io.Writer, valid ...string) (sub string, done bool, err error) {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return "", true, fmt.Errorf("%s: no subcommand", command)
	}
	switch sub = args[0]; {
	case slices.Contains(valid, sub):
		return sub, false, nil
	case sub == "help" || sub == "-h" || sub == "--help":
		fmt.Fprint(stdout, usage)
		return "", true, nil
	}
	fmt.Fprint(stdout, usage)
	return "", true, fmt.Errorf("%s: unknown subcommand %q", command, sub)
}
