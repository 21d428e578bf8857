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
	"github.com/chattermail/chattermail/platform/replytoken"
	"github.com/chattermail/chattermail/platform/smtpcapture"
	"github.com/chattermail/chattermail/services/ingest"
	"github.com/chattermail/chattermail/services/rewrite"
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
	smtpAddr := fs.String("smtp-addr", proc.Env(getenv, "SMTP_ADDR", "127.0.0.1:2526"), "inbound SMTP address for replies and bounces; empty disables it (SMTP_ADDR)")
	redisURL := fs.String("redis-url", getenv("REDIS_URL"), "Redis URL; empty runs an in-memory store whose quotas are lost on exit (REDIS_URL)")
	publicURL := fs.String("public-url", proc.Env(getenv, "PUBLIC_URL", ingest.DefaultPublicURL), "base URL of the HTTP API in the unsubscribe links of mail (PUBLIC_URL)")
	unsubscribeKeyFile := fs.String("unsubscribe-key-file", getenv("UNSUBSCRIBE_KEY_FILE"), "file holding the key (32 bytes or more) that signs unsubscribe links; empty uses the PUBLIC development key (UNSUBSCRIBE_KEY_FILE)")
	keysFile := fs.String("reply-token-keys", getenv(replytoken.EnvKeysFile), "file of reply/VERP token keys, \"<key id> <base64 key>\" per line; empty uses the PUBLIC development key (REPLY_TOKEN_KEYS_FILE)")
	dnsServers := fs.String("dns", getenv("DNS_SERVERS"), "DNS servers for DMARC lookups, comma-separated host:port; empty uses /etc/resolv.conf (DNS_SERVERS)")
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
	keys, err := replytoken.Open(*keysFile, p.Log)
	if err != nil {
		return err
	}
	dns, err := rewrite.NewResolver(*dnsServers, 0)
	if err != nil {
		return err
	}
	unsubscribeKey, err := ingest.LoadUnsubscribeKey(*unsubscribeKeyFile)
	if err != nil {
		return err
	}
	var smtpLn net.Listener
	if *smtpAddr != "" {
		if smtpLn, err = net.Listen("tcp", *smtpAddr); err != nil {
			return fmt.Errorf("dev: inbound smtp: %w", err)
		}
	}
	pl, err := newPipeline(p, pipelineOptions{Redis: rdb, Relayhost: capture.Addr(), PublicURL: *publicURL, UnsubscribeKey: unsubscribeKey, ConfigPath: ps.ConfigPath, Tokens: keys, SMTPListener: smtpLn, Resolver: dns})
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
		"inbound_smtp", *smtpAddr,
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
