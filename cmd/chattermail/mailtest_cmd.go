package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chattermail/chattermail/cmd/chattermail/domaincheck"
	"github.com/chattermail/chattermail/cmd/chattermail/mailgrade"
	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/replytoken"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// errLowScore makes "mail-test" exit with status 1 when a check fails.
var errLowScore = errors.New("mail-test: the message lost points")

// runMailTest is "chattermail mail-test": it runs the whole pipeline in
// this process (embedded NATS, in-memory Redis, the tenant's own rules,
// keys and DKIM signing), sends one sample notification, catches it at a
// local SMTP capture instead of the tenant's servers, and grades it.
func runMailTest(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("mail-test", flag.ContinueOnError)
	fs.SetOutput(stdout)
	cfgPath := fs.String("config", proc.Env(getenv, "CHATTERMAIL_CONFIG", "chattermail.yaml"), "tenants file (CHATTERMAIL_CONFIG)")
	tenant := fs.String("tenant", "", "tenant to test; required when the file has several")
	author := fs.String("author", "", `author of the sample post, "Name <address>"; default "Mail Tester <mail-tester@<alias domain>>"`)
	dnsServers := fs.String("dns", getenv("DNS_SERVERS"), "DNS servers, comma-separated host:port; empty uses /etc/resolv.conf (DNS_SERVERS)")
	include := fs.String("spf-include", "", "as for domain check")
	keysFile := fs.String("reply-token-keys", getenv(replytoken.EnvKeysFile), "reply/VERP token keys (REPLY_TOKEN_KEYS_FILE); empty uses the development key")
	asJSON := fs.Bool("json", false, "print JSON")
	var ips ipList
	fs.Var(&ips, "ip", "address mail leaves from for tenants without servers (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if *tenant == "" {
		if ids := cfg.IDs(); len(ids) == 1 {
			*tenant = ids[0]
		} else {
			return errors.New("mail-test: --tenant is required")
		}
	}
	t := cfg.Tenant(*tenant)
	if t == nil {
		return fmt.Errorf("mail-test: no tenant %q in %s", *tenant, *cfgPath)
	}
	dns, err := resolver.FromList(*dnsServers, 5*time.Second)
	if err != nil {
		return err
	}
	raw, envFrom, err := sendSample(ctx, *cfgPath, *tenant, *author, *keysFile, dns)
	if err != nil {
		return err
	}
	check := &domaincheck.Checker{DNS: dns, SendingIPs: ips, SPFInclude: *include}
	var spfResult domaincheck.Result
	for _, r := range check.Tenant(ctx, t).Results {
		if r.Check == "spf" {
			spfResult = r
		}
	}
	g := mailgrade.Message(ctx, dns, mailgrade.Input{Raw: raw, EnvelopeFrom: envFrom, SPF: spfResult})
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(g); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "score %.1f / %.0f for a notification of tenant %s\n\n", g.Score, mailgrade.MaxScore, *tenant)
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CHECK\tRESULT\tCOST\tDETAIL")
		for _, it := range g.Items {
			res := "pass"
			if !it.Passed {
				res = "FAIL"
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1f\t%s\n", it.Check, res, it.Cost, it.Detail)
		}
		tw.Flush()
	}
	if g.Score < mailgrade.MaxScore {
		return errLowScore
	}
	return nil
}

// sendSample runs the pipeline with the tenants file at cfgPath, its
// servers redirected to a local capture, posts one sample notification
// for tenant and returns the message as delivered and its MAIL FROM.
func sendSample(ctx context.Context, cfgPath, tenant, author, keysFile string, dns resolver.Resolver) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "chattermail-mail-test-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(dir)
	ns, err := startNATS("127.0.0.1:-1", dir)
	if err != nil {
		return nil, "", err
	}
	defer ns.Shutdown()
	capture, err := smtpcapture.Listen("127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	defer capture.Close()
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, "", err
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	var logs bytes.Buffer
	p, err := proc.Start(ctx, "mail-test", proc.Settings{NATSURL: ns.ClientURL(), ConfigPath: cfgPath, AdminAddr: "127.0.0.1:0", LogLevel: "warn"}, &logs)
	if err != nil {
		return nil, "", err
	}
	// Every server of the tenant delivers to the capture: the rules still
	// choose among them by from_filter, but nothing leaves this machine.
	host, port := capture.HostPort()
	t := p.Config.Tenant(tenant)
	for _, s := range t.Servers {
		s.Host, s.Port, s.TLS, s.Username, s.Password = host, port, config.TLSNone, "", ""
	}
	keys, err := replytoken.Open(keysFile, p.Log)
	if err != nil {
		return nil, "", err
	}
	pl, err := newPipeline(p, pipelineOptions{Redis: rdb, Relayhost: capture.Addr(), Tokens: keys, Resolver: dns, ConfigPath: cfgPath})
	if err != nil {
		return nil, "", err
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pl.run(runCtx, httpLn) }()
	defer func() { stop(); <-done }()

	a := &cmv1.Partner{Name: "Mail Tester", Email: "mail-tester@" + t.AliasDomain, Internal: true}
	if author != "" {
		name, addr, ok := strings.Cut(author, "<")
		if !ok {
			addr = author
		}
		a = &cmv1.Partner{Name: strings.Trim(strings.TrimSpace(name), `"`), Email: strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(addr), ">"))}
	}
	post := &cmv1.ChatterPost{
		Tenant:    tenant,
		Thread:    &cmv1.ThreadRef{Model: "mail.test", Id: "1", DisplayName: "Deliverability test"},
		Author:    a,
		Subject:   "chattermail deliverability test",
		BodyText:  "This is a sample notification sent by chattermail mail-test.\nIt checks DKIM, SPF, DMARC alignment and the headers receivers expect.",
		BodyHtml:  "<p>This is a sample notification sent by <b>chattermail mail-test</b>.</p><p>It checks DKIM, SPF, DMARC alignment and the headers receivers expect.</p>",
		Followers: []*cmv1.Follower{{Partner: &cmv1.Partner{Name: "Test Recipient", Email: "mail-test@recipient.example"}}},
		PostedAt:  timestamppb.Now(),
		Source:    cmv1.PostSource_POST_SOURCE_BUS,
	}
	if err := p.Bus.Publish(ctx, bus.Subject(bus.PostPrefix, tenant), post, "mail-test"); err != nil {
		return nil, "", err
	}
	msgs, err := capture.Wait(ctx, 1)
	if err != nil {
		return nil, "", fmt.Errorf("mail-test: no mail arrived: %w\n%s", err, logs.String())
	}
	return msgs[0].Raw, msgs[0].From, nil
}
