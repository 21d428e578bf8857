// Package admin is the admin port every chattermail process serves:
// /livez (the process runs), /readyz (its dependencies answer) and
// /metrics (Prometheus). It also runs HTTP servers with graceful shutdown.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Admin holds the readiness checks and the admin routes.
type Admin struct {
	mux *http.ServeMux

	mu     sync.Mutex
	checks []check
}

type check struct {
	name string
	fn   func() error
}

// New returns an admin handler serving /livez, /readyz and, from gatherer,
// /metrics.
func New(gatherer prometheus.Gatherer) *Admin {
	a := &Admin{mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return a
}

// AddCheck adds a readiness check; /readyz answers 503 while any fails.
func (a *Admin) AddCheck(name string, fn func() error) {
	a.mu.Lock()
	a.checks = append(a.checks, check{name, fn})
	a.mu.Unlock()
}

// Handle adds a route to the admin port.
func (a *Admin) Handle(pattern string, h http.Handler) { a.mux.Handle(pattern, h) }

// ServeHTTP implements http.Handler.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

func (a *Admin) readyz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	checks := append([]check(nil), a.checks...)
	a.mu.Unlock()
	var failed []string
	for _, c := range checks {
		if err := c.fn(); err != nil {
			failed = append(failed, c.name+": "+err.Error())
		}
	}
	if len(failed) > 0 {
		http.Error(w, "not ready\n"+strings.Join(failed, "\n"), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Serve runs an HTTP server for h on ln until ctx is done, then shuts it
// down, giving open requests up to 10 seconds.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
