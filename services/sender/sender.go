// Package sender is the last stage of the pipeline: it consumes
// mail.ready.<tenant>, renders each mail as MIME (Render), hands it to the
// tenant's outgoing server over SMTP and reports the outcome on
// events.mail.<tenant>.<outcome> (mail-rules §9):
//
//   - 2xx: delivered, with the remote reply;
//   - 4xx, or a network, TLS or timeout error: deferred and retried with
//     exponential backoff and jitter, until MaxLifetime has passed since the
//     mail became ready; then failed;
//   - 5xx: bounced at once, never retried;
//   - a mail the sender will not send (credentials over clear text, a
//     message that cannot be rendered): failed.
//
// Deferred, bounced and failed events carry the SMTP transcript of the
// attempt, with credentials redacted and without the message.
//
// Each mail is DKIM-signed (RFC 6376) with the tenant's keys for its From
// domain, or its organisational domain, else for the alias domain: the
// first RSA key (2048 bits by default) and the first Ed25519 key listed
// for that domain, two signatures when both exist (RFC 8463). Keys and
// the tenants file's dkim lists are reloaded when their files change
// (keyring).
//
// A mail goes to the tenant's server named by rewrite's decision, to the
// relayhost for tenants without servers, or, without a relayhost, to the
// MX hosts of the recipient's domain. Connections are pooled per
// destination, reused for several mails and capped per destination.
//
// Delivery is idempotent by mail id: the JetStream KV bucket "delivered"
// holds one key per accepted mail, checked before SMTP and written right
// after the 2xx, so a redelivered or republished ready message is not sent
// twice. Before that check a worker claims the mail in the KV bucket
// "sender-claims" (an entry with a TTL, refreshed while the SMTP session
// runs), so that two replicas never hold the same mail at once, even when
// a ready message is redelivered while its first worker still works on
// it. A duplicate email is possible only when a worker dies between the
// server's 2xx and the write of the delivered set.
package sender

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/platform/events"
	"github.com/chattermail/chattermail/platform/resolver"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stage is the stage name in events, dead letters and the consumer name.
const Stage = "sender"

const (
	// deliveredBucket is the JetStream KV bucket of delivered mail ids.
	deliveredBucket = "delivered"
	// claimsBucket is the JetStream KV bucket of mails a worker holds.
	claimsBucket = "sender-claims"
	// deliveredTTL is how long a delivered mail id is remembered: longer
	// than any redelivery or republish of its ready message.
	deliveredTTL = 7 * 24 * time.Hour
	// persistFor bounds the in-handler retries of the writes that follow a
	// 2xx: giving up there means a redelivery, and so a duplicate email.
	persistFor = 30 * time.Second
)

// Options configure a Service. Zero values take the defaults below.
type Options struct {
	Bus    *bus.Bus
	Config *config.Config
	Log    *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Workers is how many mails are delivered at once; default 8.
	Workers int
	// Relayhost ("host:port") receives the mail whose From.Server is empty
	// (tenants without servers), in plain SMTP with STARTTLS when offered.
	// Empty: such mail goes directly to the MX hosts of its recipient's
	// domain.
	Relayhost string
	// Resolver answers the MX and address lookups of direct-to-MX
	// delivery; default the servers of /etc/resolv.conf
	// (resolver.FromSystem). Without one, such mail is deferred with
	// ErrNoResolver.
	Resolver Resolver
	// MXPort is the port of MX hosts; default 25 (tests point it at a
	// local server).
	MXPort int
	// DestinationConcurrency caps the SMTP sessions open at once to one
	// destination (a server, the relayhost, an MX address), busy and idle
	// together; default 20 (Postfix default_destination_concurrency_limit).
	DestinationConcurrency int
	// IdleTimeout is how long a session waits in the pool for its next
	// mail before it is closed with QUIT; default 10s.
	IdleTimeout time.Duration
	// DisableConnectionReuse closes every session after its mail (QUIT)
	// instead of keeping it for the next; default false (reuse).
	DisableConnectionReuse bool
	// ConfigPath is the tenants file Config came from. When set, its dkim
	// lists are reloaded when it changes, so keys are added, switched and
	// retired without a restart. Empty: the lists of Config stay.
	ConfigPath string
	// KeyCheckInterval is how often key files (and ConfigPath) are checked
	// for changes; default 10s.
	KeyCheckInterval time.Duration
	// ClaimTTL is how long a claim of a worker that died blocks its mail;
	// live workers refresh their claims every third of it. Default
	// AckWait.
	ClaimTTL time.Duration
	// KVReplicas is the replica count of the "delivered" and
	// "sender-claims" KV buckets; default 1 (3 in a NATS cluster, like the
	// streams).
	KVReplicas int
	// HeloName is the name sent in EHLO; default os.Hostname().
	HeloName string
	// DialTimeout bounds the TCP connection and each TLS handshake;
	// default 30s.
	DialTimeout time.Duration
	// CommandTimeout bounds each SMTP command's reply, including the reply
	// to the end of DATA; default 5m (RFC 5321 §4.5.3.2).
	CommandTimeout time.Duration
	// RetryBase is the delay before the first retry; it doubles with each
	// attempt, up to RetryMax, with ±10 % jitter. Default 5m.
	RetryBase time.Duration
	// RetryMax caps the retry delay (before jitter); default 4h.
	RetryMax time.Duration
	// MaxLifetime is how long after a mail became ready temporary failures
	// are retried; then it fails. Default 5 days (Postfix
	// maximal_queue_lifetime).
	MaxLifetime time.Duration
	// AckWait is how long a mail taken by a worker that died (a crash, an
	// OOM kill) waits before another worker takes it; the bus sends
	// InProgress every third of it while an SMTP session runs. Default 60s.
	AckWait time.Duration
}

// Service is the sender stage.
type Service struct {
	o        Options
	kv       jetstream.KeyValue
	claims   jetstream.KeyValue
	holder   string
	keys     *keyring
	pool     *pool
	inflight inflight
	// rootCAs verifies servers' certificates; nil means the system pool.
	// Tests set it to trust their own server.
	rootCAs *x509.CertPool
}

// New returns a sender stage. It loads the tenants' DKIM keys (an
// unusable key is an error) and creates (or updates) the JetStream KV
// buckets "delivered", which makes deliveries idempotent, and
// "sender-claims".
func New(o Options) (*Service, error) {
	if o.Bus == nil || o.Config == nil || o.Log == nil {
		return nil, errors.New("sender: Bus, Config and Log are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AckWait <= 0 {
		o.AckWait = 60 * time.Second
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.Relayhost != "" {
		host, port, err := net.SplitHostPort(o.Relayhost)
		if _, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil {
			return nil, fmt.Errorf("sender: relayhost %q must be host:port", o.Relayhost)
		}
	}
	if o.HeloName == "" {
		o.HeloName, _ = os.Hostname()
		if o.HeloName == "" {
			o.HeloName = "localhost"
		}
	}
	if strings.ContainsAny(o.HeloName, " \r\n") {
		return nil, fmt.Errorf("sender: HELO name %q", o.HeloName)
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 30 * time.Second
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 5 * time.Minute
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 5 * time.Minute
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 4 * time.Hour
	}
	if o.RetryMax < o.RetryBase {
		o.RetryMax = o.RetryBase
	}
	if o.MaxLifetime <= 0 {
		o.MaxLifetime = 5 * 24 * time.Hour
	}
	if o.MXPort <= 0 {
		o.MXPort = 25
	}
	if o.DestinationConcurrency <= 0 {
		o.DestinationConcurrency = 20
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Second
	}
	if o.KeyCheckInterval <= 0 {
		o.KeyCheckInterval = 10 * time.Second
	}
	if o.ClaimTTL <= 0 {
		o.ClaimTTL = o.AckWait
	}
	if o.KVReplicas <= 0 {
		o.KVReplicas = 1
	}
	if o.Resolver == nil {
		if r, err := resolver.FromSystem(); err == nil {
			o.Resolver = r
		} else {
			o.Log.Warn("no DNS resolver: mail for tenants without servers waits until a relayhost is set", "err", err)
		}
	}
	keys, err := newKeyring(o.Config, o.ConfigPath, o.KeyCheckInterval, o.Log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := o.Bus.JetStream().CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      deliveredBucket,
		Description: "chattermail sender: ids of mails a server accepted, with its reply",
		TTL:         deliveredTTL,
		Replicas:    o.KVReplicas,
	})
	if err != nil {
		return nil, fmt.Errorf("sender: KV bucket %s: %w", deliveredBucket, err)
	}
	claims, err := o.Bus.JetStream().CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      claimsBucket,
		Description: "chattermail sender: mails a worker is delivering right now",
		TTL:         o.ClaimTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    o.KVReplicas,
	})
	if err != nil {
		return nil, fmt.Errorf("sender: KV bucket %s: %w", claimsBucket, err)
	}
	host, _ := os.Hostname()
	return &Service{
		o: o, kv: kv, claims: claims, keys: keys,
		holder: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), bus.NewCorrelationID()[:8]),
		pool:   newPool(o.DestinationConcurrency, o.IdleTimeout, min(o.CommandTimeout, 10*time.Second)),
	}, nil
}

// Run consumes mail.ready.* until ctx is done. Then it stops fetching,
// lets the deliveries in progress finish (their mails are acked, or
// handed back with a retry), and closes the pooled connections with QUIT.
// Every sender replica runs the same durable consumer, "sender".
func (s *Service) Run(ctx context.Context) error {
	pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		s.pool.run(pctx)
	}()
	defer func() {
		stop()
		<-reaped
	}()
	return s.o.Bus.Consume(ctx, bus.ConsumerSpec{
		Stream:  bus.StreamReady,
		Durable: Stage,
		Stage:   Stage,
		Workers: s.o.Workers,
		AckWait: s.o.AckWait,
		// Deferred mail waits out its retry delay inside the consumer
		// (NakWithDelay), so the cap is high: one tenant's relay being
		// down for hours must not stop everyone else's mail.
		MaxAckPending: 200_000,
	}, s.handle)
}

// handle delivers one ready mail. Its result follows the bus.Handler
// contract: nil acks (delivered, bounced, failed, or a duplicate),
// bus.RetryAfter schedules the next attempt of a deferred mail,
// bus.Reject dead-letters input that can never be sent, and any other
// error (NATS trouble) is retried with the consumer's backoff.
func (s *Service) handle(ctx context.Context, d *bus.Delivery) error {
	var m cmv1.OutboundMail
	if err := proto.Unmarshal(d.Data, &m); err != nil {
		return bus.Reject(fmt.Errorf("sender: undecodable OutboundMail: %w", err))
	}
	t := s.o.Config.Tenant(m.GetTenant())
	if t == nil || m.GetTenant() != d.Tenant {
		return bus.Reject(fmt.Errorf("sender: unknown tenant %q on %s", m.GetTenant(), d.Subject))
	}
	if m.GetMailId() == "" {
		return bus.Reject(errors.New("sender: mail without mail_id"))
	}
	if m.GetEnvelope().GetMailFrom() == "" || m.GetEnvelope().GetRcptTo() == "" {
		return bus.Reject(fmt.Errorf("sender: mail %s has no envelope (was it rewritten?)", m.GetMailId()))
	}
	tg, tgErr := s.target(t, &m)
	if errors.Is(tgErr, ErrUnknownServer) {
		return bus.Reject(tgErr)
	}
	log := s.o.Log.With("tenant", m.GetTenant(), "mail_id", m.GetMailId(), "attempt", d.Attempt)

	// Two copies of one mail handled at once, here or by another replica,
	// must not both pass the delivered-set check.
	unlock := s.inflight.lock(m.GetMailId())
	defer unlock()
	key := deliveredKey(m.GetMailId())
	release, err := s.claim(ctx, key)
	if errors.Is(err, ErrClaimed) {
		log.Info("held by another sender; retrying later", "err", err)
		return bus.RetryAfter(err, min(max(s.o.ClaimTTL/2, 100*time.Millisecond), 10*time.Second))
	}
	if err != nil {
		return err
	}
	defer release()

	entry, err := s.kv.Get(ctx, key)
	switch {
	case err == nil:
		log.Info("duplicate suppressed", "server", tg.name)
		return s.confirmDelivered(ctx, &m, entry.Value())
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return fmt.Errorf("sender: delivered-set lookup of %s: %w", m.GetMailId(), err)
	}

	now := s.o.Now()
	var a attempt
	if tgErr != nil {
		a = attempt{class: temporary, err: tgErr}
	} else {
		msg, err := Render(&m, now)
		if err != nil {
			a = attempt{class: refused, err: err}
		} else {
			keys := s.keys.keysFor(t.ID, fromDomain(m.GetFrom().GetSendingAddress(), m.GetFrom().GetHeader()), t.AliasDomain)
			if msg, err = signMessage(msg, keys); err != nil {
				a = attempt{class: temporary, err: err}
			} else {
				a = s.deliver(ctx, tg, m.GetEnvelope(), msg)
				a.dkim = describeKeys(keys)
			}
		}
	}
	return s.settle(ctx, log, &m, d, tg, a)
}

// target returns the server m goes to: the tenant's server named by the
// From decision, or, when it names none, the relayhost, or without a
// relayhost the MX hosts of the recipient's domain.
func (s *Service) target(t *config.Tenant, m *cmv1.OutboundMail) (target, error) {
	name := m.GetFrom().GetServer()
	if name == "" {
		if s.o.Relayhost == "" {
			return target{name: "mx", mx: true, tls: config.TLSOpportunistic}, nil
		}
		host, port, _ := net.SplitHostPort(s.o.Relayhost)
		p, _ := strconv.Atoi(port)
		return target{name: "relayhost", host: host, port: p, tls: config.TLSOpportunistic}, nil
	}
	srv := t.Server(name)
	if srv == nil {
		return target{}, fmt.Errorf("%w %q for tenant %s", ErrUnknownServer, name, t.ID)
	}
	return target{name: srv.Name, tenant: t.ID, host: srv.Host, port: srv.Port, tls: srv.TLS, username: srv.Username, password: srv.Password}, nil
}

// settle reports an attempt and decides what happens to the ready message.
func (s *Service) settle(ctx context.Context, log *slog.Logger, m *cmv1.OutboundMail, d *bus.Delivery, tg target, a attempt) error {
	now := s.o.Now()
	ev := func(o cmv1.Outcome, reason string) *cmv1.MailEvent {
		e := events.ForMail(m, o, Stage)
		e.At = timestamppb.New(now)
		e.Attempt = int32(d.Attempt)
		e.Smtp = a.reply
		e.Reason = reason
		if o != cmv1.Outcome_OUTCOME_DELIVERED {
			e.Transcript = a.transcript
		}
		return e
	}
	switch a.class {
	case delivered:
		rec := deliveredRecord{
			Code: a.reply.GetCode(), EnhancedCode: a.reply.GetEnhancedCode(), Text: a.reply.GetText(),
			Host: a.reply.GetHost(), Server: tg.name, Attempt: int32(d.Attempt), At: now.UTC(), DKIM: a.dkim,
		}
		val, _ := json.Marshal(rec)
		if err := persist(ctx, func() error {
			_, err := s.kv.Put(ctx, deliveredKey(m.GetMailId()), val)
			return err
		}); err != nil {
			// The redelivery will send the mail a second time.
			log.Error("delivered but not recorded; the mail may be sent twice", "server", tg.name, "err", err)
			return fmt.Errorf("sender: record delivery of %s: %w", m.GetMailId(), err)
		}
		log.Info("delivered", "server", tg.name, "host", tg.host, "code", a.reply.GetCode())
		return s.publish(ctx, rec.event(m))
	case permanent:
		log.Warn("bounced", "server", tg.name, "host", tg.host, "code", a.reply.GetCode(), "err", a.err)
		return s.publish(ctx, ev(cmv1.Outcome_OUTCOME_BOUNCED, a.err.Error()))
	case refused:
		log.Warn("failed: not sent", "server", tg.name, "err", a.err)
		return s.publish(ctx, ev(cmv1.Outcome_OUTCOME_FAILED, a.err.Error()))
	}
	// Temporary failure.
	if age := now.Sub(d.Published); !d.Published.IsZero() && age > s.o.MaxLifetime {
		reason := fmt.Sprintf("gave up after %s (max lifetime %s): %v", age.Round(time.Second), s.o.MaxLifetime, a.err)
		log.Warn("failed: lifetime exceeded", "server", tg.name, "age", age, "err", a.err)
		return s.publish(ctx, ev(cmv1.Outcome_OUTCOME_FAILED, reason))
	}
	delay := retryDelay(s.o.RetryBase, s.o.RetryMax, d.Attempt)
	e := ev(cmv1.Outcome_OUTCOME_DEFERRED, a.err.Error())
	e.NextAttemptAt = timestamppb.New(now.Add(delay))
	log.Info("deferred", "server", tg.name, "host", tg.host, "code", a.reply.GetCode(), "retry_in", delay, "err", a.err)
	if err := s.publish(ctx, e); err != nil {
		return err
	}
	return bus.RetryAfter(a.err, delay)
}

// publish publishes a mail event, retrying briefly: the event is the only
// trace of an SMTP session that already happened.
func (s *Service) publish(ctx context.Context, ev *cmv1.MailEvent) error {
	return persist(ctx, func() error { return events.PublishMail(ctx, s.o.Bus, ev) })
}

// confirmDelivered handles a mail found in the delivered set: it is acked
// without SMTP, and its delivered event is published again from the
// record, under the same Nats-Msg-Id, in case the first handler died
// between recording the delivery and publishing the event.
func (s *Service) confirmDelivered(ctx context.Context, m *cmv1.OutboundMail, val []byte) error {
	var rec deliveredRecord
	if err := json.Unmarshal(val, &rec); err != nil || rec.Attempt == 0 {
		return nil
	}
	return s.publish(ctx, rec.event(m))
}

// deliveredRecord is the value stored under a mail's key in the
// "delivered" bucket: the reply that accepted the mail and when.
type deliveredRecord struct {
	Code         int32     `json:"code"`
	EnhancedCode string    `json:"enhanced_code,omitempty"`
	Text         string    `json:"text"`
	Host         string    `json:"host"`
	Server       string    `json:"server"`
	Attempt      int32     `json:"attempt"`
	At           time.Time `json:"delivered_at"`
	// DKIM lists the signatures the mail carried, as "d=… s=… a=…".
	DKIM []string `json:"dkim,omitempty"`
}

func (r deliveredRecord) event(m *cmv1.OutboundMail) *cmv1.MailEvent {
	e := events.ForMail(m, cmv1.Outcome_OUTCOME_DELIVERED, Stage)
	e.At = timestamppb.New(r.At)
	e.Attempt = r.Attempt
	e.Smtp = &cmv1.SMTPReply{Code: r.Code, EnhancedCode: r.EnhancedCode, Text: r.Text, Host: r.Host}
	e.Reason = fmt.Sprintf("accepted by %s (server %q)", r.Host, r.Server)
	if len(r.DKIM) > 0 {
		e.Reason += "; DKIM " + strings.Join(r.DKIM, ", ")
	} else {
		e.Reason += "; not DKIM-signed"
	}
	return e
}

// retryDelay is the wait before the attempt after attempt number n (from
// 1): base doubled n-1 times, capped at max, then ±10 % jitter so that
// mails deferred together do not come back together.
func retryDelay(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	if spread := int64(d) / 5; spread > 0 {
		d += time.Duration(rand.Int64N(spread+1)) - d/10
	}
	return d
}

// persist calls f until it succeeds, ctx is done or persistFor has passed.
func persist(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(persistFor)
	wait := 100 * time.Millisecond
	for {
		err := f()
		if err == nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// kvKey is what a JetStream KV key may hold.
var kvKey = regexp.MustCompile(`^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$`)

// deliveredKey is a mail's key in the delivered bucket: the mail id
// itself, or, for an id a KV key cannot hold, "sha256." and its digest.
func deliveredKey(mailID string) string {
	if kvKey.MatchString(mailID) {
		return mailID
	}
	sum := sha256.Sum256([]byte(mailID))
	return "sha256." + hex.EncodeToString(sum[:])
}

// inflight serialises the handling of one mail id within the process.
type inflight struct {
	mu   sync.Mutex
	held map[string]*inflightLock
}

type inflightLock struct {
	mu   sync.Mutex
	refs int
}

// lock blocks until no other worker handles id and returns the unlock.
func (f *inflight) lock(id string) (unlock func()) {
	f.mu.Lock()
	if f.held == nil {
		f.held = map[string]*inflightLock{}
	}
	l := f.held[id]
	if l == nil {
		l = &inflightLock{}
		f.held[id] = l
	}
	l.refs++
	f.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		f.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(f.held, id)
		}
		f.mu.Unlock()
	}
}
