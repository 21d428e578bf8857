// Command quota runs the quota stage: it counts every rewritten mail
// against its tenant's daily limit in Redis, passes the mail on to the
// sender when it fits, holds it when it does not and releases held mail
// by itself when a window opens or the limit is raised. Settings come
// from flags, whose defaults come from the environment (see -h);
// -redis-url (REDIS_URL) names the Redis that keeps the counters and the
// waiting lines.
//
// The admin port serves, besides /livez, /readyz and /metrics, the quota
// API (GET, PUT, DELETE /quota/{tenant}; see quota.Service.AdminHandler).
// It needs the bearer token read from -admin-token-file
// (ADMIN_TOKEN_FILE); without one it answers 403.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // tenants' time zones resolve even in an image without zoneinfo

	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/services/quota"
	"github.com/redis/go-redis/v9"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quota:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("quota", flag.ContinueOnError)
	var ps proc.Settings
	ps.Register(fs, getenv, "127.0.0.1:9093")
	redisURL := fs.String("redis-url", proc.Env(getenv, "REDIS_URL", "redis://127.0.0.1:6379/0"),
		"Redis URL, redis://[user:password@]host:port/db or rediss:// for TLS (REDIS_URL)")
	workers := fs.Int("workers", 8, "mails counted at once")
	tokenFile := fs.String("admin-token-file", getenv("ADMIN_TOKEN_FILE"),
		"file holding the bearer token of the quota admin API; without it the API answers 403 (ADMIN_TOKEN_FILE)")
	batch := fs.Int("release-batch", 50, "held mails of one tenant released at once")
	interval := fs.Duration("release-interval", time.Second, "pause between two batches of one tenant's held mail")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ropts, err := parseRedisURL(*redisURL)
	if err != nil {
		return err
	}
	// A slow Redis fails the call (and the mail waits) instead of
	// holding a worker.
	ropts.ContextTimeoutEnabled = true
	token, err := readToken(*tokenFile)
	if err != nil {
		return err
	}
	p, err := proc.Start(ctx, "quota", ps, stdout)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	svc, err := quota.New(quota.Options{Bus: p.Bus, Config: p.Config, Log: p.Log, Redis: rdb, Workers: *workers,
		ReleaseBatch: *batch, ReleaseInterval: *interval, AdminToken: token})
	if err != nil {
		return err
	}
	p.Admin.AddCheck("redis", svc.Ready)
	p.Admin.Handle("/quota/", svc.AdminHandler())
	if token == "" {
		p.Log.Warn("no admin token (ADMIN_TOKEN_FILE): the quota admin API answers 403")
	}
	// Never the URL itself: it may carry the password.
	p.Log.Info("redis", "addr", ropts.Addr, "db", ropts.DB, "tls", ropts.TLSConfig != nil)
	if err := svc.Ready(); err != nil {
		p.Log.Warn("redis not reachable yet; mail waits until it is", "err", err)
	}
	return p.Run(ctx, svc.Run)
}

// readToken reads the admin token from path ("" for none). The token is
// the file's content without surrounding white space; an empty file is an
// error, so a mounted but unfilled secret does not pass unnoticed.
func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("quota: -admin-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("quota: -admin-token-file %s is empty", path)
	}
	return token, nil
}

// parseRedisURL parses -redis-url. Its errors never repeat the URL, which
// may hold a password.
func parseRedisURL(u string) (*redis.Options, error) {
	o, err := redis.ParseURL(u)
	var uerr *url.Error
	if errors.As(err, &uerr) {
		// url.Error quotes the whole URL, and its inner error may quote
		// parts of the authority: say only what kind of mistake it is.
		return nil, errors.New("quota: -redis-url is not a valid URL")
	}
	if err != nil {
		return nil, fmt.Errorf("quota: -redis-url: %w", err)
	}
	return o, nil
}
