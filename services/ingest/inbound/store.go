package inbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/chattermail/chattermail/platform/bus"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/nats-io/nats.go/jetstream"
)

// ObjectBucket is the JetStream object store holding message bodies too
// large to travel inline on INBOUND, and the original of every reply
// posted, by inbound id (so the full original stays retrievable after
// quotes and signatures were stripped).
const ObjectBucket = "inbound"

// InlineLimit is the largest body carried inside an InboundMail (design:
// bodies over 1 MB go to the object store). It is lowered to leave room
// for the envelope under the server's max_payload.
const InlineLimit = 1 << 20

// Spool stores received messages. Store must return only once the message
// is durably stored: the SMTP server answers 250 after it.
type Spool interface {
	Store(ctx context.Context, m *cmv1.InboundMail, raw []byte) error
}

// Originals reads back a stored message by inbound id.
type Originals interface {
	Original(ctx context.Context, m *cmv1.InboundMail) ([]byte, error)
}

// BusSpool is the Spool and Originals on JetStream: the message on
// inbound.mail.<tenant> (Nats-Msg-Id = inbound id), its body inline or,
// above the inline limit, in the object store ObjectBucket.
type BusSpool struct {
	bus    *bus.Bus
	obj    jetstream.ObjectStore
	inline int
}

// OpenSpool creates the object store bucket if needed.
func OpenSpool(ctx context.Context, b *bus.Bus, replicas int) (*BusSpool, error) {
	obj, err := b.JetStream().CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      ObjectBucket,
		Description: "chattermail: inbound message bodies (large ones, and originals of posted replies)",
		Replicas:    max(replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("inbound: object store %s: %w", ObjectBucket, err)
	}
	// Keep the envelope and headers well under max_payload.
	inline := min(InlineLimit, int(b.Conn().MaxPayload())-64<<10)
	return &BusSpool{bus: b, obj: obj, inline: inline}, nil
}

// Store implements Spool.
func (s *BusSpool) Store(ctx context.Context, m *cmv1.InboundMail, raw []byte) error {
	m.Size = int64(len(raw))
	if len(raw) > s.inline {
		if err := s.Keep(ctx, m.GetInboundId(), raw); err != nil {
			return err
		}
		m.ObjectName = m.GetInboundId()
	} else {
		m.Raw = raw
	}
	return s.bus.Publish(ctx, bus.Subject(bus.InboundPrefix, m.GetTenant()), m, bus.MsgID(m.GetInboundId(), "inbound"))
}

// Keep puts raw in the object store under name (idempotent).
func (s *BusSpool) Keep(ctx context.Context, name string, raw []byte) error {
	if info, err := s.obj.GetInfo(ctx, name); err == nil && info.Size == uint64(len(raw)) {
		return nil
	}
	if _, err := s.obj.Put(ctx, jetstream.ObjectMeta{Name: name}, bytes.NewReader(raw)); err != nil {
		return fmt.Errorf("inbound: keep %s: %w", name, err)
	}
	return nil
}

// ErrNoOriginal is returned for an inbound id whose body is not stored.
var ErrNoOriginal = errors.New("inbound: original not stored")

// Original implements Originals: the inline body, else the stored object.
func (s *BusSpool) Original(ctx context.Context, m *cmv1.InboundMail) ([]byte, error) {
	if m.GetObjectName() == "" {
		return m.GetRaw(), nil
	}
	return s.Get(ctx, m.GetObjectName())
}

// Get reads a stored body by name (an inbound id).
func (s *BusSpool) Get(ctx context.Context, name string) ([]byte, error) {
	r, err := s.obj.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNoOriginal, name)
	}
	if err != nil {
		return nil, fmt.Errorf("inbound: get %s: %w", name, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("inbound: read %s: %w", name, err)
	}
	return b, nil
}
