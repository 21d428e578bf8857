package client_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// chattermail is an in-process NATS server with the ingest stage
// running: what a Go service talks to.
type chattermail struct {
	URL string
	Svc *ingest.Service
	Bus *bus.Bus
	Log *syncLog

	stop func()
}

// startChattermail starts it; Close stops it and removes its data.
func startChattermail() (*chattermail, error) {
	dir, err := os.MkdirTemp("", "chattermail-client-")
	if err != nil {
		return nil, err
	}
	ns, err := startServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir})
	if err != nil {
		return nil, err
	}
	cm, err := startIngest(ns.ClientURL())
	if err != nil {
		ns.Shutdown()
		return nil, err
	}
	stop := cm.stop
	cm.stop = func() {
		stop()
		ns.Shutdown()
		ns.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
	return cm, nil
}

// startServer starts a NATS server with opts.
func startServer(opts *server.Options) (*server.Server, error) {
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, err
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("nats did not start")
	}
	return ns, nil
}

// startIngest runs the ingest stage, connected to url with opts, for
// tenants acme and globex.
func startIngest(url string, opts ...nats.Option) (*chattermail, error) {
	logs := &syncLog{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	b, err := bus.New(nc, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	fail := func(err error) (*chattermail, error) {
		cancel()
		b.Close()
		return nil, err
	}
	if err := b.EnsureStreams(ctx, bus.StreamOptions{Memory: true}); err != nil {
		return fail(err)
	}
	cfg, err := config.Parse([]byte("tenants:\n  acme:\n    alias_domain: example.com\n  globex:\n    alias_domain: globex.test\n"), "")
	if err != nil {
		return fail(err)
	}
	svc, err := ingest.New(ingest.Options{Bus: b, Config: cfg, Log: log, UnsubscribeKey: []byte("client test unsubscribe key, 32 bytes or more")})
	if err != nil {
		return fail(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	return &chattermail{URL: url, Svc: svc, Bus: b, Log: logs, stop: func() {
		cancel()
		<-done
		b.Close()
	}}, nil
}

// Close stops everything.
func (c *chattermail) Close() { c.stop() }
