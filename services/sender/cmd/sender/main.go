// Command sender runs the sender stage: it delivers each ready mail over
// SMTP and reports delivered, deferred, bounced or failed. Settings come
// from flags, whose defaults come from the environment (see -h).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/services/sender"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sender:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("sender", flag.ContinueOnError)
	var ps proc.Settings
	ps.Register(fs, getenv, "127.0.0.1:9094")
	workers, err := envInt(getenv, "SENDER_WORKERS", 8)
	if err != nil {
		return err
	}
	retryBase, err := envDuration(getenv, "SENDER_RETRY_BASE", 5*time.Minute)
	if err != nil {
		return err
	}
	retryMax, err := envDuration(getenv, "SENDER_RETRY_MAX", 4*time.Hour)
	if err != nil {
		return err
	}
	maxLifetime, err := envDuration(getenv, "SENDER_MAX_LIFETIME", 5*24*time.Hour)
	if err != nil {
		return err
	}
	idleTimeout, err := envDuration(getenv, "SENDER_IDLE_TIMEOUT", 10*time.Second)
	if err != nil {
		return err
	}
	keyCheck, err := envDuration(getenv, "SENDER_KEY_CHECK_INTERVAL", 10*time.Second)
	if err != nil {
		return err
	}
	concurrency, err := envInt(getenv, "SENDER_DESTINATION_CONCURRENCY", 20)
	if err != nil {
		return err
	}
	mxPort, err := envInt(getenv, "SENDER_MX_PORT", 25)
	if err != nil {
		return err
	}
	relayhost := fs.String("relayhost", getenv("RELAYHOST"), "host:port receiving the mail of tenants without servers; empty sends such mail directly to the recipients' MX hosts (RELAYHOST)")
	dnsServers := fs.String("dns", getenv("DNS_SERVERS"), "DNS servers for MX lookups, comma-separated host:port; empty uses /etc/resolv.conf (DNS_SERVERS)")
	fs.IntVar(&mxPort, "mx-port", mxPort, "port of MX hosts (SENDER_MX_PORT)")
	fs.IntVar(&concurrency, "destination-concurrency", concurrency, "SMTP sessions open at once per destination, idle and busy (SENDER_DESTINATION_CONCURRENCY)")
	fs.DurationVar(&idleTimeout, "idle-timeout", idleTimeout, "how long an SMTP session waits in the pool for its next mail (SENDER_IDLE_TIMEOUT)")
	noReuse := fs.Bool("no-connection-reuse", getenv("SENDER_NO_CONNECTION_REUSE") != "", "close every SMTP session after its mail (SENDER_NO_CONNECTION_REUSE)")
	fs.DurationVar(&keyCheck, "key-check-interval", keyCheck, "how often DKIM key files and the tenants file are checked for changes (SENDER_KEY_CHECK_INTERVAL)")
	heloName := fs.String("helo-name", getenv("SENDER_HELO_NAME"), "name sent in EHLO; default the host name (SENDER_HELO_NAME)")
	fs.IntVar(&workers, "workers", workers, "mails delivered at once (SENDER_WORKERS)")
	fs.DurationVar(&retryBase, "retry-base", retryBase, "delay before the first retry of a deferred mail; doubles per attempt (SENDER_RETRY_BASE)")
	fs.DurationVar(&retryMax, "retry-max", retryMax, "longest delay between retries (SENDER_RETRY_MAX)")
	fs.DurationVar(&maxLifetime, "max-lifetime", maxLifetime, "how long a deferred mail is retried before it fails (SENDER_MAX_LIFETIME)")
	ackWait := fs.Duration("ack-wait", 60*time.Second, "how long a mail held by a dead worker waits before another takes it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := proc.Start(ctx, "sender", ps, stdout)
	if err != nil {
		return err
	}
	var res sender.Resolver
	if *dnsServers != "" {
		if res, err = resolver.FromList(*dnsServers, 0); err != nil {
			return err
		}
	}
	svc, err := sender.New(sender.Options{
		Bus: p.Bus, Config: p.Config, Log: p.Log,
		Workers:                workers,
		Relayhost:              *relayhost,
		Resolver:               res,
		MXPort:                 mxPort,
		HeloName:               *heloName,
		RetryBase:              retryBase,
		RetryMax:               retryMax,
		MaxLifetime:            maxLifetime,
		AckWait:                *ackWait,
		DestinationConcurrency: concurrency,
		IdleTimeout:            idleTimeout,
		DisableConnectionReuse: *noReuse,
		ConfigPath:             ps.ConfigPath,
		KeyCheckInterval:       keyCheck,
		KVReplicas:             ps.StreamReplicas,
	})
	if err != nil {
		p.Bus.Close()
		return err
	}
	return p.Run(ctx, svc.Run)
}

func envInt(getenv func(string) string, key string, def int) (int, error) {
	v := getenv(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: not a number", key, v)
	}
	return n, nil
}

func envDuration(getenv func(string) string, key string, def time.Duration) (time.Duration, error) {
	v := getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: not a duration such as 5m or 4h", key, v)
	}
	return d, nil
}
