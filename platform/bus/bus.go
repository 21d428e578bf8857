package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Header names carried on every chattermail message.
const (
	// HeaderCorrelation ties together every message caused by one post.
	HeaderCorrelation = "Chattermail-Correlation-Id"
	// HeaderTraceParent is the W3C trace context, carried unchanged.
	HeaderTraceParent = "traceparent"
	// HeaderType names the protobuf message type of the payload.
	HeaderType = "Chattermail-Type"
	// HeaderDLQReason is the reason a message was dead-lettered.
	HeaderDLQReason = "Chattermail-Dlq-Reason"
	// HeaderDLQSubject is the subject a dead-lettered message came from.
	HeaderDLQSubject = "Chattermail-Dlq-Subject"
	// HeaderDLQStage is the stage that dead-lettered the message.
	HeaderDLQStage = "Chattermail-Dlq-Stage"
)

// Bus is a connection to NATS with JetStream. It is safe for concurrent use.
type Bus struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	metrics *Metrics
}

// Connect dials NATS at url. The connection reconnects forever; while it
// is down, publishes fail and Ready reports false.
func Connect(url, name string, log *slog.Logger) (*Bus, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
	)
	if err != nil {
		return nil, fmt.Errorf("bus: connect %s: %w", redactURL(url), err)
	}
	return New(nc, log)
}

// New wraps an existing connection; Close closes it.
func New(nc *nats.Conn, log *slog.Logger) (*Bus, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	return &Bus{nc: nc, js: js, log: log}, nil
}

// Conn is the underlying NATS connection (core request/reply, KV helpers).
func (b *Bus) Conn() *nats.Conn { return b.nc }

// JetStream is the underlying JetStream context.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Ready reports whether the connection to NATS is up.
func (b *Bus) Ready() error {
	if !b.nc.IsConnected() {
		return errors.New("bus: not connected to NATS")
	}
	return nil
}

// Close drains and closes the connection.
func (b *Bus) Close() {
	_ = b.nc.Drain()
}

// Trace is the correlation carried from hop to hop.
type Trace struct {
	// CorrelationID ties together every message caused by one post.
	CorrelationID string
	// TraceParent is a W3C traceparent, passed through unchanged.
	TraceParent string
}

type traceKey struct{}

// WithTrace returns ctx carrying t; Publish copies it into headers.
func WithTrace(ctx context.Context, t Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

// TraceFrom returns the trace carried by ctx, if any.
func TraceFrom(ctx context.Context) Trace {
	t, _ := ctx.Value(traceKey{}).(Trace)
	return t
}

// NewCorrelationID returns a random id for a message that starts a chain.
func NewCorrelationID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Publish marshals msg and publishes it on subject with Nats-Msg-Id msgID
// and the trace of ctx, waiting for the stream's acknowledgement. A
// duplicate (same msgID within the window) is a success.
func (b *Bus) Publish(ctx context.Context, subject string, msg proto.Message, msgID string) error {
	data, err := proto.Marshal(msg)
	if err != nil {
		return fmt.Errorf("bus: marshal %T: %w", msg, err)
	}
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(HeaderType, string(msg.ProtoReflect().Descriptor().FullName()))
	setTrace(m.Header, TraceFrom(ctx))
	return b.PublishMsg(ctx, m, msgID)
}

// PublishMsg publishes a prepared message with Nats-Msg-Id msgID.
func (b *Bus) PublishMsg(ctx context.Context, m *nats.Msg, msgID string) error {
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := b.js.PublishMsg(ctx, m, opts...); err != nil {
		return fmt.Errorf("bus: publish %s: %w", m.Subject, err)
	}
	return nil
}

func setTrace(h nats.Header, t Trace) {
	if t.CorrelationID != "" {
		h.Set(HeaderCorrelation, t.CorrelationID)
	}
	if t.TraceParent != "" {
		h.Set(HeaderTraceParent, t.TraceParent)
	}
}

func traceOf(h nats.Header) Trace {
	return Trace{CorrelationID: h.Get(HeaderCorrelation), TraceParent: h.Get(HeaderTraceParent)}
}

// redactURL drops credentials from a NATS URL before it is logged.
func redactURL(u string) string {
	at := strings.LastIndex(u, "@")
	if at < 0 {
		return u
	}
	scheme := strings.Index(u, "://")
	if scheme < 0 || scheme > at {
		return "***" + u[at:]
	}
	return u[:scheme+3] + "***" + u[at:]
}
