package client_test

import (
	"context"
	"fmt"
	"log"

	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/client"
	"github.com/nats-io/nats.go"
)

// A helpdesk service posts an update on a ticket and learns which mails
// it caused. It runs against an in-process chattermail here; a real
// service connects to the NATS server chattermail uses.
func Example() {
	cm, err := startChattermail()
	if err != nil {
		log.Fatal(err)
	}
	defer cm.Close()

	nc, err := nats.Connect(cm.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc, "acme")
	if err != nil {
		log.Fatal(err)
	}

	answer, err := c.Post(context.Background(), &cmv1.ChatterPost{
		Thread:         &cmv1.ThreadRef{Model: "helpdesk.ticket", Id: "7", DisplayName: "Printer on fire"},
		Author:         &cmv1.Partner{Name: "Desk Bot", Email: "bot@example.com", Internal: true},
		Subject:        "Ticket updated",
		BodyText:       "We are on it.",
		IdempotencyKey: "ticket-7-update-1", // a retry sends nothing twice
		Followers: []*cmv1.Follower{
			{Partner: &cmv1.Partner{Name: "Dora", Email: "dora@customer.example"}},
			{Partner: &cmv1.Partner{Name: "Eve", Email: "eve@example.com", PartnerId: "12", Internal: true},
				Preference: cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("message id:", answer.GetMessageId() == answer.GetPostId()+"@example.com")
	fmt.Println("emails:", len(answer.GetMailIds()))
	// Output:
	// message id: true
	// emails: 1
}
