package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chattermail/chattermail/platform/logging"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"
)

// runDev is "chattermail dev": every stage in one process, an embedded
// NATS JetStream server persisting under the data folder, Redis at
// REDIS_URL or else an in-memory Redis-compatible store, and a local SMTP
// capture that tenants without servers deliver to.
func runDev(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stdout)
	dataDir := fs.String("data", proc.Env(getenv, "CHATTERMAIL_DATA", ".data"), "folder for the embedded NATS server's JetStream data (CHATTERMAIL_DATA)")
	natsAddr := fs.String("nats-listen", proc.Env(getenv, "NATS_LISTEN", "127.0.0.1:14222"), "address of the embedded NATS server; other services publish chatter.post.<tenant> here (NATS_LISTEN)")
	httpAddr := fs.String("http-addr", proc.Env(getenv, "HTTP_ADDR", "127.0.0.1:8080"), "HTTP API address (HTTP_ADDR)")
	captureAddr := fs.String("capture-addr", proc.Env(getenv, "CAPTURE_ADDR", "127.0.0.1:2525"), "local SMTP capture address (CAPTURE_ADDR)")
	redisURL := fs.String("redis-url", getenv("REDIS_URL"), "Redis URL; empty runs an in-memory store whose quotas are lost on exit (REDIS_URL)")
	var ps proc.Settings
	ps.Register(fs, getenv, "127.0.0.1:9090")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logging.New(stdout, ps.LogLevel)
	if err != nil {
		return err
	}
	log = log.With("service", "dev")

	ns, err := startNATS(*natsAddr, filepath.Join(*dataDir, "nats"))
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	log.Info("embedded NATS JetStream", "url", ns.ClientURL(), "store", filepath.Join(*dataDir, "nats"))

	capture, err := smtpcapture.Listen(*captureAddr)
	if err != nil {
		return err
	}
	defer capture.Close()

	rdb, closeRedis, err := devRedis(*redisURL, log)
	if err != nil {
		return err
	}
	defer closeRedis()

	ps.NATSURL = ns.ClientURL()
	p, err := proc.Start(ctx, "chattermail", ps, stdout)
	if err != nil {
		return err
	}
	p.Admin.Handle("/captured/", http.StripPrefix("/captured", capture.Handler()))
	pl, err := newPipeline(p, pipelineOptions{Redis: rdb, Relayhost: capture.Addr()})
	if err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("dev: http: %w", err)
	}
	log.Info("chattermail dev is up",
		"api", "http://"+httpLn.Addr().String()+"/v1/posts",
		"captured_mail", "http://"+p.AdminAddr()+"/captured/",
		"smtp_capture", capture.Addr(),
		"nats", ns.ClientURL())
	return pl.run(ctx, httpLn)
}

// startNATS runs an embedded NATS server with JetStream stored under dir.
func startNATS(addr, dir string) (*server.Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dev: nats-listen %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("dev: nats-listen %q: %w", addr, err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "chattermail-dev",
		Host:       host,
		Port:       p,
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("dev: nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("dev: nats did not start on %s", addr)
	}
	return ns, nil
}

// devRedis connects to url, or when it is empty starts an in-memory
// Redis-compatible store (miniredis) running the same Lua scripts.
func devRedis(url string, log *slog.Logger) (redis.UniversalClient, func(), error) {
	if url != "" {
		opt, err := redis.ParseURL(url)
		if err != nil {
			return nil, nil, fmt.Errorf("dev: REDIS_URL: %w", err)
		}
		c := redis.NewClient(opt)
		log.Info("redis", "addr", opt.Addr)
		return c, func() { _ = c.Close() }, nil
	}
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, nil, fmt.Errorf("dev: in-memory redis: %w", err)
	}
	log.Warn("REDIS_URL is not set: quotas live in an in-memory store and are NOT persisted; set REDIS_URL to keep them across restarts", "addr", mr.Addr())
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	return c, func() { _ = c.Close(); mr.Close() }, nil
}
