package main

import (
	"context"
	"net"
	"time"

	"github.com/chattermail/chattermail/platform/admin"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/services/ingest"
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
}

// pipeline is the four stages sharing one process.
type pipeline struct {
	p       *proc.Process
	ingest  *ingest.Service
	rewrite *rewrite.Service
	quota   *quota.Service
	sender  *sender.Service
}

func newPipeline(p *proc.Process, o pipelineOptions) (*pipeline, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	pl := &pipeline{p: p}
	var err error
	if pl.ingest, err = ingest.New(ingest.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", ingest.Stage), Now: o.Now}); err != nil {
		return nil, err
	}
	if pl.rewrite, err = rewrite.New(rewrite.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", rewrite.Stage), Now: o.Now}); err != nil {
		return nil, err
	}
	if pl.quota, err = quota.New(quota.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", quota.Stage), Redis: o.Redis, Now: o.Now}); err != nil {
		return nil, err
	}
	if pl.sender, err = sender.New(sender.Options{Bus: p.Bus, Config: p.Config, Log: p.Log.With("stage", sender.Stage), Now: o.Now,
		Relayhost: o.Relayhost, HeloName: "localhost"}); err != nil {
		return nil, err
	}
	p.Admin.AddCheck("redis", pl.quota.Ready)
	return pl, nil
}

// run serves the HTTP API on httpLn and runs every stage until ctx is done.
func (pl *pipeline) run(ctx context.Context, httpLn net.Listener) error {
	return pl.p.Run(ctx,
		pl.ingest.Run, pl.rewrite.Run, pl.quota.Run, pl.sender.Run,
		func(ctx context.Context) error { return admin.Serve(ctx, httpLn, pl.ingest.Handler(), pl.p.Log) },
	)
}
