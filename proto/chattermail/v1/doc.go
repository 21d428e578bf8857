// Package chattermailv1 is the Go code generated from events.proto: the
// messages every chattermail stage and every client exchange on the bus
// (ChatterPost, OutboundMail, MailEvent, QuotaEvent, InboundMail,
// BounceReport, InboxNotification, PostAccepted). Regenerate it with
// "make proto"; "make test" fails when it is stale.
package chattermailv1
