package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chattermail/chattermail/services/ingest/client"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The documented account-per-tenant layout (testdata/tenant-accounts.conf)
// lets a tenant's service post, request, receive and replay its own
// events, and nothing of another tenant's.
func TestTenantAccounts(t *testing.T) {
	t.Setenv("CM_STORE_DIR", t.TempDir())
	t.Setenv("CM_PASSWORD", "cm-secret")
	t.Setenv("ACME_PASSWORD", "acme-secret")
	t.Setenv("GLOBEX_PASSWORD", "globex-secret")
	opts, err := server.ProcessConfigFile("testdata/tenant-accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := startServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	cm, err := startIngest(ns.ClientURL(), nats.UserInfo("chattermail", "cm-secret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cm.Close)

	connect := func(user, password string) *nats.Conn {
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, password))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	acmeNC, globexNC := connect("acme", "acme-secret"), connect("globex", "globex-secret")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// acme keeps its events in a stream of its own account.
	js, _ := jetstream.New(acmeNC)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CHATTERMAIL_EVENTS",
		Subjects: []string{"events.mail.acme.>", "events.inbox.acme.>"}}); err != nil {
		t.Fatal(err)
	}
	globexSeen := make(chan string, 100)
	if _, err := globexNC.Subscribe(">", func(m *nats.Msg) { globexSeen <- m.Subject }); err != nil {
		t.Fatal(err)
	}
	_ = globexNC.Flush()

	acme, err := client.New(acmeNC, "acme", client.WithEventsStream("CHATTERMAIL_EVENTS"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := acme.Post(ctx, ticketPost("acct-1", "dora@customer.example"))
	if err != nil || len(a.GetMailIds()) != 1 {
		t.Fatalf("Post from acme's account = %v, %v, want one mail", a, err)
	}
	if err := acme.Publish(ctx, ticketPost("acct-2")); err != nil {
		t.Errorf("Publish from acme's account = %v, want the stream's acknowledgement", err)
	}
	var replayed []string
	err = acme.ReplayMailEvents(ctx, client.From{}, func(e client.Event) error {
		replayed = append(replayed, e.GetPostId())
		if len(replayed) == 2 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) || replayed[0] != a.GetPostId() {
		t.Errorf("ReplayMailEvents in acme's account = %q, %v, want the composed events of both posts", replayed, err)
	}

	// acme cannot post for globex: no such subject exists in its account.
	intruder, _ := client.New(acmeNC, "globex")
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if err := intruder.Publish(short, ticketPost("intrusion")); err == nil {
		t.Error("acme published on chatter.post.globex")
	}
	if a, err := intruder.Post(short, ticketPost("intrusion")); err == nil {
		t.Errorf("acme requested on api.post.globex: %v", a)
	}
	// And globex saw nothing of acme's traffic.
	select {
	case s := <-globexSeen:
		t.Errorf("globex's account received %s", s)
	case <-time.After(200 * time.Millisecond):
	}
}
