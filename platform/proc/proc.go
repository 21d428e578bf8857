// Package proc is what every chattermail process does around its service:
// read the common settings from flags and environment, build the logger,
// load the tenants file, connect to NATS and declare the streams, serve the
// admin port, run the service until the context ends and shut down
// gracefully.
//
// A service's main stays: parse → construct → run → wait.
package proc

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/chattermail/chattermail/platform/admin"
	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/logging"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Settings are the process settings every service shares. Each is a flag
// whose default comes from the environment variable named in its help.
type Settings struct {
	// NATSURL (NATS_URL, default nats://127.0.0.1:4222).
	NATSURL string
	// ConfigPath is the tenants file (CHATTERMAIL_CONFIG, default chattermail.yaml).
	ConfigPath string
	// AdminAddr serves /livez, /readyz, /metrics (ADMIN_ADDR).
	AdminAddr string
	// LogLevel is debug, info, warn or error (LOG_LEVEL, default info).
	LogLevel string
	// StreamReplicas is the JetStream replica count of the streams
	// (NATS_STREAM_REPLICAS, default 1).
	StreamReplicas int
}

// Register adds the settings' flags to fs with defaults from getenv;
// adminAddr is the service's default admin address.
func (s *Settings) Register(fs *flag.FlagSet, getenv func(string) string, adminAddr string) {
	fs.StringVar(&s.NATSURL, "nats-url", Env(getenv, "NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL (NATS_URL)")
	fs.StringVar(&s.ConfigPath, "config", Env(getenv, "CHATTERMAIL_CONFIG", "chattermail.yaml"), "tenants file (CHATTERMAIL_CONFIG)")
	fs.StringVar(&s.AdminAddr, "admin-addr", Env(getenv, "ADMIN_ADDR", adminAddr), "admin listen address for /livez, /readyz, /metrics (ADMIN_ADDR)")
	fs.StringVar(&s.LogLevel, "log-level", Env(getenv, "LOG_LEVEL", "info"), "log level: debug, info, warn, error (LOG_LEVEL)")
	replicas, _ := strconv.Atoi(Env(getenv, "NATS_STREAM_REPLICAS", "1"))
	fs.IntVar(&s.StreamReplicas, "stream-replicas", replicas, "JetStream replicas for the streams (NATS_STREAM_REPLICAS)")
}

// Env returns getenv(key), or def when it is empty.
func Env(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

// Process is a started process: logger, tenants, bus, metrics and admin.
type Process struct {
	Log      *slog.Logger
	Config   *config.Config
	Bus      *bus.Bus
	Registry *prometheus.Registry
	Admin    *admin.Admin

	adminLn net.Listener
}

// Start builds the logger, loads the tenants file, connects to NATS,
// declares the streams and opens the admin port.
func Start(ctx context.Context, name string, s Settings, stdout io.Writer) (*Process, error) {
	log, err := logging.New(stdout, s.LogLevel)
	if err != nil {
		return nil, err
	}
	log = log.With("service", name)
	cfg, err := config.Load(s.ConfigPath)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b, err := bus.Connect(s.NATSURL, "chattermail-"+name, log)
	if err != nil {
		return nil, err
	}
	b.SetMetrics(bus.NewMetrics(reg))
	if err := b.EnsureStreams(ctx, bus.StreamOptions{Replicas: s.StreamReplicas}); err != nil {
		b.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", s.AdminAddr)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("proc: admin port: %w", err)
	}
	p := &Process{Log: log, Config: cfg, Bus: b, Registry: reg, Admin: admin.New(reg), adminLn: ln}
	p.Admin.AddCheck("nats", b.Ready)
	log.Info("started", "nats", s.NATSURL, "admin", ln.Addr().String(), "tenants", len(cfg.Tenants))
	return p, nil
}

// AdminAddr is the address the admin port listens on.
func (p *Process) AdminAddr() string { return p.adminLn.Addr().String() }

// Run serves the admin port and runs every part until ctx is done or one
// part fails; it then cancels the others, waits for them to drain and
// closes the bus.
func (p *Process) Run(ctx context.Context, parts ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	parts = append(parts, func(ctx context.Context) error {
		return admin.Serve(ctx, p.adminLn, p.Admin, p.Log)
	})
	err := RunAll(ctx, parts...)
	p.Bus.Close()
	p.Log.Info("stopped")
	return err
}

// RunAll runs the parts concurrently until ctx is done or one of them
// returns an error, then cancels the rest and waits for them. It returns
// the first error.
func RunAll(ctx context.Context, parts ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, part := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := part(ctx); err != nil && !errors.Is(err, context.Canceled) {
				once.Do(func() { first = err })
			}
			cancel()
		}()
	}
	wg.Wait()
	return first
}
