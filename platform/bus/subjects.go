// Package bus is chattermail's plumbing on NATS JetStream: the streams and
// subjects of the contract, publishing with a deterministic Nats-Msg-Id,
// durable pull consumers whose handler results map to Ack, NakWithDelay or
// Term in one place, a dead-letter subject, and correlation headers carried
// from hop to hop.
//
// Delivery is at-least-once at every hop. A stage publishes its output with
// Nats-Msg-Id = mail id + stage (see MsgID) and acknowledges its input only
// after that publish was acknowledged, so a crash at any point causes a
// redelivery, never a loss, and the stream's duplicate window absorbs the
// repeated publish.
package bus

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Subject prefixes of the contract (design.md, "Contracts").
const (
	// PostPrefix: chatter.post.<tenant>, stream POSTS, consumed by ingest.
	PostPrefix = "chatter.post"
	// APIPostPrefix: api.post.<tenant>, core request/reply answered by ingest.
	APIPostPrefix = "api.post"
	// ComposePrefix: mail.compose.<tenant>, stream COMPOSE, ingest → rewrite.
	ComposePrefix = "mail.compose"
	// RewrittenPrefix: mail.rewritten.<tenant>, stream REWRITTEN, rewrite → quota.
	RewrittenPrefix = "mail.rewritten"
	// HeldPrefix: mail.held.<tenant>, stream HELD, over-limit mail.
	HeldPrefix = "mail.held"
	// ReadyPrefix: mail.ready.<tenant>, stream READY, quota → sender.
	ReadyPrefix = "mail.ready"
	// InboundPrefix: inbound.mail.<tenant>, stream INBOUND.
	InboundPrefix = "inbound.mail"
	// MailEventPrefix: events.mail.<tenant>.<outcome>, stream EVENTS.
	MailEventPrefix = "events.mail"
	// QuotaEventPrefix: events.quota.<tenant>, stream EVENTS.
	QuotaEventPrefix = "events.quota"
	// InboxEventPrefix: events.inbox.<tenant>.<user>, stream EVENTS.
	InboxEventPrefix = "events.inbox"
	// DLQPrefix: dlq.<stage>.<tenant>, stream DLQ.
	DLQPrefix = "dlq"
)

// ErrBadTenant is returned for a tenant id that cannot be a subject token.
var ErrBadTenant = errors.New("bus: tenant id must be 1-64 characters of a-z, 0-9, '-' or '_'")

var tenantRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// ValidTenant reports whether id can name a tenant: it becomes a subject
// token, so it is restricted to lower-case letters, digits, '-' and '_'.
func ValidTenant(id string) error {
	if !tenantRE.MatchString(id) {
		return fmt.Errorf("%w: %q", ErrBadTenant, id)
	}
	return nil
}

// Subject joins a prefix and tokens: Subject(ComposePrefix, "acme") is
// "mail.compose.acme".
func Subject(prefix string, tokens ...string) string {
	return prefix + "." + strings.Join(tokens, ".")
}

// SubjectTenant returns the tenant token of a subject built from prefix, or
// "" when the subject does not start with prefix.
func SubjectTenant(prefix, subject string) string {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return ""
	}
	tenant, _, _ := strings.Cut(rest, ".")
	return tenant
}

// MsgID is the deterministic Nats-Msg-Id of a stage's output for one
// mail (or post): the id and the stage, so a redelivered input republishes
// under the same id and the stream drops the duplicate.
func MsgID(id, stage string) string {
	return id + ":" + stage
}
