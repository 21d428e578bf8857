package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Delivery is one message handed to a Handler.
type Delivery struct {
	// Subject the message was published on.
	Subject string
	// Tenant is the subject's tenant token.
	Tenant string
	Data   []byte
	Header nats.Header
	// Attempt is 1 on the first delivery and grows with each redelivery.
	Attempt int
	// StreamSeq is the message's sequence in its stream; stable across
	// redeliveries.
	StreamSeq uint64
	// Published is when the message was stored in the stream.
	Published time.Time
}

// Handler processes one delivery. The error it returns decides, in one
// place (settle), what happens to the message:
//
//   - nil: Ack. The handler has done its work and published its output.
//   - Reject(err): the input can never succeed (undecodable, invalid). It
//     is copied to dlq.<stage>.<tenant> with the reason in
//     Chattermail-Dlq-Reason, then terminated. The dead-letter publish
//     comes first: in a work-queue stream Term deletes the message.
//   - RetryAfter(err, d): NakWithDelay(d); nothing is lost.
//   - any other error: temporary; NakWithDelay with the consumer's backoff.
//
// Consumers never give up on a temporary error (MaxDeliver is unlimited,
// since NakWithDelay counts toward it): mail waits, it is not dropped.
type Handler func(ctx context.Context, d *Delivery) error

// RejectError marks an input that must be dead-lettered.
type RejectError struct{ Err error }

func (e *RejectError) Error() string { return "rejected: " + e.Err.Error() }
func (e *RejectError) Unwrap() error { return e.Err }

// Reject wraps err so that the message is dead-lettered with err as reason.
func Reject(err error) error { return &RejectError{Err: err} }

// RetryError asks for a redelivery after a given delay.
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string { return fmt.Sprintf("retry in %s: %v", e.After, e.Err) }
func (e *RetryError) Unwrap() error { return e.Err }

// RetryAfter wraps err so that the message is redelivered after d.
func RetryAfter(err error, d time.Duration) error { return &RetryError{Err: err, After: d} }

// Backoff returns the delay before redelivery number attempt+1.
type Backoff func(attempt int) time.Duration

// ExponentialBackoff doubles base per attempt up to max, with ±20 % jitter.
func ExponentialBackoff(base, max time.Duration) Backoff {
	return func(attempt int) time.Duration {
		d := base
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		d = min(d, max)
		jitter := time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
		return d + jitter
	}
}

// ConsumerSpec describes one stage's durable pull consumer.
type ConsumerSpec struct {
	// Stream to consume, for example StreamCompose.
	Stream string
	// Durable is the consumer name shared by every replica of the stage.
	Durable string
	// Stage names the stage in dead-letter subjects and logs.
	Stage string
	// FilterSubject restricts the consumer; empty takes the whole stream.
	FilterSubject string
	// Workers is how many messages are handled at once; default 1.
	Workers int
	// AckWait is how long the server waits for an ack before redelivering;
	// default 30s. Handlers running longer send InProgress automatically.
	AckWait time.Duration
	// Backoff is the delay for temporary errors; default
	// ExponentialBackoff(1s, 5m).
	Backoff Backoff
	// MaxAckPending caps the messages delivered but not yet acked, which
	// includes those waiting out a NakWithDelay; when it is reached the
	// consumer gets nothing new. Default 10,000 (at least 4 per worker).
	MaxAckPending int
}

func (s *ConsumerSpec) defaults() {
	if s.Workers <= 0 {
		s.Workers = 1
	}
	if s.AckWait <= 0 {
		s.AckWait = 30 * time.Second
	}
	if s.Backoff == nil {
		s.Backoff = ExponentialBackoff(time.Second, 5*time.Minute)
	}
	if s.Stage == "" {
		s.Stage = s.Durable
	}
	if s.MaxAckPending <= 0 {
		s.MaxAckPending = max(10_000, s.Workers*4)
	}
}

// Consume declares spec's durable consumer (idempotently) and hands its
// messages to h on spec.Workers goroutines until ctx is done. It then stops
// pulling, lets the handlers finish the messages already received, and
// returns. Handlers run with a context that is not cancelled by ctx, so an
// in-flight mail completes its publish and ack during shutdown.
func (b *Bus) Consume(ctx context.Context, spec ConsumerSpec, h Handler) error {
	spec.defaults()
	cons, err := b.js.CreateOrUpdateConsumer(ctx, spec.Stream, jetstream.ConsumerConfig{
		Durable:       spec.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       spec.AckWait,
		MaxDeliver:    -1,
		FilterSubject: spec.FilterSubject,
		MaxAckPending: spec.MaxAckPending,
	})
	if err != nil {
		return fmt.Errorf("bus: consumer %s on %s: %w", spec.Durable, spec.Stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(spec.Workers * 2))
	if err != nil {
		return fmt.Errorf("bus: consume %s: %w", spec.Durable, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()

	hctx := context.WithoutCancel(ctx)
	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range spec.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range msgs {
				b.handle(hctx, &spec, h, m)
			}
		}()
	}
	for {
		m, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			b.log.Warn("consumer pull failed", "stage", spec.Stage, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		msgs <- m
	}
	close(msgs)
	wg.Wait()
	return nil
}

func (b *Bus) handle(ctx context.Context, spec *ConsumerSpec, h Handler, m jetstream.Msg) {
	d := &Delivery{Subject: m.Subject(), Data: m.Data(), Header: m.Headers(), Attempt: 1}
	if d.Header == nil {
		d.Header = nats.Header{}
	}
	d.Tenant = subjectTenant(d.Subject)
	if md, err := m.Metadata(); err == nil {
		d.Attempt = int(md.NumDelivered)
		d.StreamSeq = md.Sequence.Stream
		d.Published = md.Timestamp
	}
	t := traceOf(d.Header)
	if t.CorrelationID == "" {
		t.CorrelationID = NewCorrelationID()
	}
	ctx = WithTrace(ctx, t)

	stopKeepAlive := keepAlive(m, spec.AckWait)
	err := h(ctx, d)
	stopKeepAlive()
	b.settle(ctx, spec, d, m, err)
}

// keepAlive tells the server the message is in progress every third of
// AckWait until the returned function is called, so a long handler (a slow
// SMTP transaction) is not redelivered to another worker meanwhile.
func keepAlive(m jetstream.Msg, ackWait time.Duration) func() {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// settle is the one place where handler results become acks.
func (b *Bus) settle(ctx context.Context, spec *ConsumerSpec, d *Delivery, m jetstream.Msg, err error) {
	var rej *RejectError
	var retry *RetryError
	switch {
	case err == nil:
		if aerr := m.Ack(); aerr != nil {
			b.log.Warn("ack failed; the message will be redelivered", "stage", spec.Stage, "seq", d.StreamSeq, "err", aerr)
		}
		b.count(spec.Stage, "ack")
	case errors.As(err, &rej):
		if derr := b.deadLetter(ctx, spec.Stage, d, rej.Err.Error()); derr != nil {
			b.log.Error("dead-letter publish failed; retrying", "stage", spec.Stage, "err", derr)
			_ = m.NakWithDelay(spec.Backoff(d.Attempt))
			b.count(spec.Stage, "nak")
			return
		}
		b.log.Warn("message dead-lettered", "stage", spec.Stage, "subject", d.Subject, "reason", rej.Err.Error())
		_ = m.TermWithReason(rej.Err.Error())
		b.count(spec.Stage, "dead_letter")
	case errors.As(err, &retry):
		_ = m.NakWithDelay(retry.After)
		b.count(spec.Stage, "retry")
	default:
		delay := spec.Backoff(d.Attempt)
		b.log.Warn("handler failed; will retry", "stage", spec.Stage, "subject", d.Subject, "attempt", d.Attempt, "retry_in", delay, "err", err)
		_ = m.NakWithDelay(delay)
		b.count(spec.Stage, "nak")
	}
}

// deadLetter copies d to dlq.<stage>.<tenant>, keeping payload and headers
// and adding the reason and the original subject.
func (b *Bus) deadLetter(ctx context.Context, stage string, d *Delivery, reason string) error {
	tenant := d.Tenant
	if ValidTenant(tenant) != nil {
		tenant = "unknown"
	}
	h := nats.Header{}
	for k, v := range d.Header {
		if k != jetstream.MsgIDHeader {
			h[k] = v
		}
	}
	h.Set(HeaderDLQReason, reason)
	h.Set(HeaderDLQSubject, d.Subject)
	h.Set(HeaderDLQStage, stage)
	m := &nats.Msg{Subject: Subject(DLQPrefix, stage, tenant), Data: d.Data, Header: h}
	return b.PublishMsg(ctx, m, MsgID(d.Subject+"#"+strconv.FormatUint(d.StreamSeq, 10), "dlq"))
}

// subjectTenant returns the tenant token of a subject: the third token
// of every contract subject (mail.compose.<tenant>, events.mail.<tenant>.x).
func subjectTenant(subject string) string {
	parts := strings.SplitN(subject, ".", 4)
	if len(parts) < 3 {
		return ""
	}
	return parts[2]
}
