// Package events publishes the outcome events every stage reports on the
// EVENTS stream: events.mail.<tenant>.<outcome> for one mail's life,
// events.quota.<tenant> and events.inbox.<tenant>.<user>.
package events

import (
	"context"
	"strconv"
	"strings"

	"github.com/chattermail/chattermail/platform/bus"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// Outcome returns the subject word of o: "delivered" for OUTCOME_DELIVERED.
func Outcome(o cmv1.Outcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_"))
}

// MailSubject is events.mail.<tenant>.<outcome>.
func MailSubject(tenant string, o cmv1.Outcome) string {
	return bus.Subject(bus.MailEventPrefix, tenant, Outcome(o))
}

// ForMail starts an event about m with the fields every event carries.
func ForMail(m *cmv1.OutboundMail, o cmv1.Outcome, stage string) *cmv1.MailEvent {
	return &cmv1.MailEvent{
		Tenant:    m.GetTenant(),
		MailId:    m.GetMailId(),
		PostId:    m.GetPostId(),
		Outcome:   o,
		Stage:     stage,
		Thread:    m.GetThread(),
		Recipient: m.GetRecipient().GetEmail(),
		MessageId: m.GetMessageId(),
	}
}

// PublishMail publishes ev on events.mail.<tenant>.<outcome>. Its
// Nats-Msg-Id is mail id + outcome + attempt, so a stage that redoes its
// work after a crash does not report the same step twice. ev.At must be
// set by the caller from its clock.
func PublishMail(ctx context.Context, b *bus.Bus, ev *cmv1.MailEvent) error {
	id := ev.GetMailId() + ":" + Outcome(ev.GetOutcome())
	if ev.GetAttempt() > 0 {
		id += ":" + strconv.Itoa(int(ev.GetAttempt()))
	}
	return b.Publish(ctx, MailSubject(ev.GetTenant(), ev.GetOutcome()), ev, bus.MsgID(id, "event"))
}
