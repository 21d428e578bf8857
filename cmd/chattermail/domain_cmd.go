package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/chattermail/chattermail/cmd/chattermail/domaincheck"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/resolver"
)

// errChecksFailed makes "domain check" exit with status 1 for scripts.
var errChecksFailed = errors.New("domain check: some checks failed")

// ipList is a repeatable -ip flag.
type ipList []net.IP

func (l *ipList) String() string { return fmt.Sprint(*l) }
func (l *ipList) Set(s string) error {
	ip := net.ParseIP(s)
	if ip == nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	*l = append(*l, ip)
	return nil
}

// runDomain is "chattermail domain check".
func runDomain(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		return errors.New("domain: usage: chattermail domain check [--tenant T] [--json] [--dns host:port] [--ip IP]")
	}
	fs := flag.NewFlagSet("domain check", flag.ContinueOnError)
	fs.SetOutput(stdout)
	cfgPath := fs.String("config", proc.Env(getenv, "CHATTERMAIL_CONFIG", "chattermail.yaml"), "tenants file (CHATTERMAIL_CONFIG)")
	tenant := fs.String("tenant", "", "check one tenant; default every tenant")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	dnsAddr := fs.String("dns", getenv("DNS_SERVERS"), "DNS servers, comma-separated host:port; empty uses /etc/resolv.conf (DNS_SERVERS)")
	include := fs.String("spf-include", "", `mechanism to suggest for a missing SPF authorisation, e.g. "include:_spf.provider.net"; default ip4:/ip6: of the sending hosts`)
	var ips ipList
	fs.Var(&ips, "ip", "address mail leaves from for tenants without servers (repeatable)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	dns, err := resolver.FromList(*dnsAddr, 5*time.Second)
	if err != nil {
		return err
	}
	ids := cfg.IDs()
	if *tenant != "" {
		if cfg.Tenant(*tenant) == nil {
			return fmt.Errorf("domain check: no tenant %q in %s", *tenant, *cfgPath)
		}
		ids = []string{*tenant}
	}
	c := &domaincheck.Checker{DNS: dns, SendingIPs: ips, SPFInclude: *include}
	var reports []*domaincheck.Report
	failed := false
	for _, id := range ids {
		r := c.Tenant(ctx, cfg.Tenant(id))
		failed = failed || r.Failed()
		reports = append(reports, r)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(reports); err != nil {
			return err
		}
	} else {
		printReports(stdout, reports)
	}
	if failed {
		return errChecksFailed
	}
	return nil
}

func printReports(w io.Writer, reports []*domaincheck.Report) {
	for _, r := range reports {
		fmt.Fprintf(w, "tenant %s\n", r.Tenant)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  CHECK\tNAME\tSTATUS\tDETAIL")
		for _, x := range r.Results {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", x.Check, x.Name, strings.ToUpper(string(x.Status)), x.Detail)
		}
		tw.Flush()
		for _, x := range r.Results {
			if x.Fix != "" {
				fmt.Fprintf(w, "  fix %s %s: %s\n", x.Check, x.Name, x.Fix)
			}
		}
		fmt.Fprintln(w)
	}
}
