package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/services/ingest/msgindex"
	"github.com/chattermail/chattermail/services/ingest/suppression"
	"github.com/chattermail/chattermail/services/ingest/threads"
)

// Options configure Open: the SMTP server (when Listener is set) and the
// router, wired to the ingest stage's stores.
type Options struct {
	// Bus, Config, Tokens and Log are required.
	Bus    *bus.Bus
	Config *config.Config
	Tokens TokenVerifier
	Log    *slog.Logger
	// Threads and Suppression are the ingest stage's stores. Required.
	Threads     *threads.Store
	Suppression *suppression.List
	// Now is the clock; default time.Now.
	Now func() time.Time
	// KVReplicas is the replica count of the buckets; default 1.
	KVReplicas int
	// Listener is where SMTP is served; nil runs the router only.
	Listener net.Listener
	// Hostname, MaxMessageBytes and TLSConfig: see ServerOptions.
	Hostname        string
	MaxMessageBytes int64
	TLSConfig       *tls.Config
	// Router tunes the router; its stores and plumbing are filled in.
	Router RouterOptions
	// Server tunes the SMTP server; its stores and plumbing are filled in.
	Server ServerOptions
}

// Service is the inbound SMTP server and the INBOUND router.
type Service struct {
	o      Options
	server *Server
	router *Router
	spool  *BusSpool
}

// Open creates the buckets and object store and returns the service.
func Open(ctx context.Context, o Options) (*Service, error) {
	if o.Bus == nil || o.Config == nil || o.Tokens == nil || o.Log == nil || o.Threads == nil || o.Suppression == nil {
		return nil, errors.New("inbound: Bus, Config, Tokens, Log, Threads and Suppression are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	js := o.Bus.JetStream()
	idx, err := msgindex.Open(ctx, js, o.KVReplicas)
	if err != nil {
		return nil, err
	}
	spool, err := OpenSpool(ctx, o.Bus, o.KVReplicas)
	if err != nil {
		return nil, err
	}
	state, err := OpenState(ctx, js, o.KVReplicas)
	if err != nil {
		return nil, err
	}
	s := &Service{o: o, spool: spool}
	ro := o.Router
	ro.Bus, ro.Config, ro.Tokens, ro.Index, ro.Threads, ro.Suppression = o.Bus, o.Config, o.Tokens, idx, o.Threads, o.Suppression
	ro.State, ro.Originals, ro.Log, ro.Now = state, spool, o.Log.With("part", "inbound-router"), o.Now
	if s.router, err = NewRouter(ro); err != nil {
		return nil, err
	}
	if o.Listener != nil {
		so := o.Server
		so.Config, so.Tokens, so.Spool, so.Index, so.Log, so.Now = o.Config, o.Tokens, spool, idx, o.Log.With("part", "inbound-smtp"), o.Now
		so.Hostname, so.MaxMessageBytes, so.TLSConfig = o.Hostname, o.MaxMessageBytes, o.TLSConfig
		if s.server, err = NewServer(so); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Router is the INBOUND router.
func (s *Service) Router() *Router { return s.router }

// Spool stores and reads back inbound messages (Original by inbound id).
func (s *Service) Spool() *BusSpool { return s.spool }

// Run serves SMTP (when configured) and routes INBOUND until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	parts := []func(context.Context) error{s.router.Run}
	if s.server != nil {
		s.o.Log.Info("inbound SMTP listening", "addr", s.o.Listener.Addr().String(), "starttls", s.o.TLSConfig != nil)
		parts = append(parts, func(ctx context.Context) error { return s.server.Run(ctx, s.o.Listener) })
	}
	return proc.RunAll(ctx, parts...)
}

// LoadTLS reads a certificate and key for STARTTLS; both empty gives nil.
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("inbound: TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
