package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/proc"
	"github.com/chattermail/chattermail/services/quota"
	"github.com/redis/go-redis/v9"
)

const quotaUsage = `usage:
  chattermail quota status --tenant T [--json]   used, limit (and why), waiting, next release
  chattermail quota set    --tenant T --daily N  set the runtime daily limit (wins over the tenants file)
  chattermail quota clear  --tenant T            remove it: the tenants file's daily_limit applies again

Every subcommand reads the tenants file (--config, CHATTERMAIL_CONFIG) and
talks to the quota service's Redis directly (--redis-url, REDIS_URL), so it
works whether the service runs or not. A running service hears of a change
at once and releases held mail when the new limit leaves room.
`

// runQuota is "chattermail quota status|set|clear".
func runQuota(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	return quotaCommand(ctx, args, getenv, stdout, time.Now)
}

// quotaCommand is runQuota with its clock.
func quotaCommand(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer, now func() time.Time) error {
	sub, done, err := subcommand("quota", args, quotaUsage, stdout, "status", "set", "clear")
	if done {
		return err
	}
	fs := flag.NewFlagSet("quota "+sub, flag.ContinueOnError)
	fs.SetOutput(stdout)
	cfgPath := fs.String("config", proc.Env(getenv, "CHATTERMAIL_CONFIG", "chattermail.yaml"), "tenants file (CHATTERMAIL_CONFIG)")
	redisURL := fs.String("redis-url", getenv("REDIS_URL"), "Redis URL of the quota service, redis://[user:password@]host:port/db (REDIS_URL); required")
	tenant := fs.String("tenant", "", "tenant id (required)")
	daily := fs.Int64("daily", -1, "set: the new daily limit, 0 or more (0 holds all mail)")
	asJSON := fs.Bool("json", false, "status: print JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("quota %s: unexpected argument %q", sub, fs.Arg(0))
	case *tenant == "":
		return fmt.Errorf("quota %s: --tenant is required", sub)
	case sub == "set" && *daily < 0:
		return errors.New("quota set: --daily N is required, N from 0")
	case sub != "set" && *daily >= 0:
		return fmt.Errorf("quota %s: --daily belongs to quota set", sub)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	t := cfg.Tenant(*tenant)
	if t == nil {
		return fmt.Errorf("quota: unknown tenant %q (the tenants file %s has %s)", *tenant, *cfgPath, strings.Join(cfg.IDs(), ", "))
	}
	rdb, err := quotaRedis(*redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	l := quota.NewLedger(rdb)

	switch sub {
	case "set":
		if err := l.SetLimit(ctx, t.ID, *daily); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: daily limit set to %d at runtime (the tenants file says %d)\n\n", t.ID, *daily, t.DailyLimit)
	case "clear":
		if err := l.ClearLimit(ctx, t.ID); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: runtime limit cleared; the tenants file's daily_limit %d applies\n\n", t.ID, t.DailyLimit)
	}
	st, err := l.Status(ctx, t, now())
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printQuotaStatus(stdout, st)
	return nil
}

// quotaRedis connects to the Redis at u. Its errors never repeat the URL,
// which may hold a password.
func quotaRedis(u string) (*redis.Client, error) {
	if u == "" {
		return nil, errors.New("quota: REDIS_URL (or --redis-url) is required: limits and held mail live in the quota service's Redis")
	}
	o, err := redis.ParseURL(u)
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return nil, errors.New("quota: --redis-url is not a valid URL")
	}
	if err != nil {
		return nil, fmt.Errorf("quota: --redis-url: %w", err)
	}
	o.MaxRetries = 1
	return redis.NewClient(o), nil
}

// printQuotaStatus prints st for people.
func printQuotaStatus(w io.Writer, st quota.Status) {
	line := func(k, format string, a ...any) { fmt.Fprintf(w, "%-13s "+format+"\n", append([]any{k}, a...)...) }
	line("tenant", "%s", st.Tenant)
	line("window", "%s (%s), resets at %s", st.Window, st.TimeZone, st.ResetsAt.Format(time.RFC3339))
	line("used", "%d", st.Used)
	if st.LimitSource == quota.LimitFromOverride {
		line("limit", "%d (runtime override; the tenants file says %d; \"chattermail quota clear\" removes it)", st.Limit, st.FileLimit)
	} else {
		line("limit", "%d (tenants file; no runtime override)", st.Limit)
	}
	line("waiting", "%d held for a later window", st.Waiting)
	line("paced", "%d waiting for their pacing slot", st.Paced)
	line("releasing", "%d being published", st.Releasing)
	if st.NextRelease.IsZero() {
		line("next release", "none (%s)", st.NextReleaseReason)
	} else {
		line("next release", "%s (%s)", st.NextRelease.Format(time.RFC3339), st.NextReleaseReason)
	}
}
