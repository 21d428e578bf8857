// Command quota runs the quota stage: it counts every rewritten mail
// against its tenant's daily limit in Redis, passes the mail on to the
// sender when it fits and holds it until the next window when it does
// not. Settings come from flags, whose defaults come from the environment
// (see -h); -redis-url (REDIS_URL) names the Redis that keeps the counters.
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
	"syscall"
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	ropts, err := parseRedisURL(*redisURL)
	if err != nil {
		return err
	}
	p, err := proc.Start(ctx, "quota", ps, stdout)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	svc, err := quota.New(quota.Options{Bus: p.Bus, Config: p.Config, Log: p.Log, Redis: rdb, Workers: *workers})
	if err != nil {
		return err
	}
	p.Admin.AddCheck("redis", svc.Ready)
	// Never the URL itself: it may carry the password.
	p.Log.Info("redis", "addr", ropts.Addr, "db", ropts.DB, "tls", ropts.TLSConfig != nil)
	if err := svc.Ready(); err != nil {
		p.Log.Warn("redis not reachable yet; mail waits until it is", "err", err)
	}
	return p.Run(ctx, svc.Run)
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
