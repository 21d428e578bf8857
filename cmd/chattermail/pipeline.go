package main

import (
	"context"
	"net"
	"time"

	"github.com/chattermail/chattermail/platform/admin"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/replytoken"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/chattermail/chattermail/services/ingest/inbound"
	"github.com/chattermail/chattermail/services/quota"
	"github.com/chattermail/chattermail/services/rewrite"
	"github.com/chattermail/chattermail/services/sender"
	"github.com/redis/go-redis/v9"
)

// pipelineOptions are what the all-in-one passes to the four stages on top
// of the process plumbing.
type pipelineOptions struct {
	Redis     redis.UniversalClient
	Relayhost string
	Now       func() time.Time
	// SenderAckWait shortens the sender's redelivery wait (tests).
	SenderAckWait time.Duration
	// SenderRetryBase shortens the sender's first retry delay (tests);
	// default the sender's.
	SenderRetryBase time.Duration
	// PublicURL is the base of the unsubscribe links in mail; default
	// ingest.DefaultPublicURL.
	PublicURL string
	// UnsubscribeKey signs the unsubscribe links; default the public
	// development key, with a warning.
	UnsubscribeKey []byte
	// Resolver answers every DNS lookup: rewrite's DMARC policies, the
	// sender's MX hosts, inbound SPF/DKIM/DMARC; default the servers of
	// /etc/resolv.conf.
	Resolver resolver.Resolver
	// Tokens signs reply and VERP tokens; default the development keys,
	// with a warning.
	Tokens *replytoken.Keys
	// SMTPListener serves inbound SMTP (replies and bounces); nil runs
	// the inbound router only.
	SMTPListener net.Listener
	// Inbound tunes the inbound router (rate limits, bounce thresholds;
	// tests).
	Inbound inbound.RouterOptions
	// ConfigPath is the tenants file, which the sender watches for DKIM
	// key changes; empty: keys change only with a restart.
	ConfigPath string
}

// pipeline is the four stages and the inbound router sharing one process.
type pipeline struct {
	p       *proc.Process
	ingest  *ingest.Service
	rewrite *rewrite.Service
	quota   *quota.Service
	sender  *sender.Service
	inbound *inbound.Service
}

func newPipeline(p *proc.Process, o pipelineOptions) (*pipeline, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	pl := &pipeline{p: p}
	var err error
	if pl.ingest, err = ingest.New(ingest.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", ingest.Stage), Now: o.Now,
		PublicURL: o.PublicURL, UnsubscribeKey: o.UnsubscribeKey}); err != nil {
		return nil, err
	}
	if o.Tokens == nil {
		o.Tokens, _ = replytoken.Open("", p.Log)
	}
	if o.Resolver == nil {
		sys, err := resolver.FromSystem()
		if err != nil {
			// DMARC lookups then fail; mail waits and goes out rewritten.
			p.Log.Warn("no DNS servers: DMARC lookups will fail and authors will be rewritten", "err", err)
			o.Resolver = resolver.New(nil, 0)
		} else {
			o.Resolver = sys
		}
	}
	if pl.rewrite, err = rewrite.New(rewrite.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", rewrite.Stage), Now: o.Now,
		Resolver: o.Resolver, Tokens: o.Tokens}); err != nil {
		return nil, err
	}
	if o.Inbound.Auth == nil {
		o.Inbound.Auth = &inbound.Authenticator{DNS: o.Resolver}
	}
	if o.Inbound.Counter == nil {
		o.Inbound.Counter = inbound.NewMetrics(p.Registry)
	}
	if pl.inbound, err = inbound.Open(context.Background(), inbound.Options{Bus: p.Bus, Config: p.Config, Tokens: o.Tokens,
		Log: p.Log.With("stage", inbound.Stage), Now: o.Now, Threads: pl.ingest.Threads(), Suppression: pl.ingest.Suppression(),
		Listener: o.SMTPListener, Router: o.Inbound}); err != nil {
		return nil, err
	}
	// The all-in-one is for development: its quota admin API (on the
	// admin port, /quota/{tenant}) answers loopback clients without a token.
	if pl.quota, err = quota.New(quota.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", quota.Stage), Redis: o.Redis, Now: o.Now,
		AdminLoopback: true}); err != nil {
		return nil, err
	}
	if pl.sender, err = sender.New(sender.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", sender.Stage), Now: o.Now,
		Relayhost: o.Relayhost, HeloName: "localhost", Resolver: o.Resolver, AckWait: o.SenderAckWait, RetryBase: o.SenderRetryBase, ConfigPath: o.ConfigPath}); err != nil {
		return nil, err
	}
	p.Admin.AddCheck("redis", pl.quota.Ready)
	p.Admin.Handle("/quota/", pl.quota.AdminHandler())
	return pl, nil
}

// run serves the HTTP API on httpLn and runs every stage until ctx is done.
func (pl *pipeline) run(ctx context.Context, httpLn net.Listener) error {
	return pl.p.Run(ctx,
		pl.ingest.Run, pl.rewrite.Run, pl.quota.Run, pl.sender.Run, pl.inbound.Run,
		func(ctx context.Context) error { return admin.Serve(ctx, httpLn, pl.ingest.Handler(), pl.p.Log) },
	)
}
