package msgindex_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/testenv"
	"github.com/chattermail/chattermail/services/ingest/msgindex"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestPutLookup(t *testing.T) {
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := msgindex.Lookup(ctx, js, "acme", "p1@example.com"); err == nil {
		t.Error("Lookup before the bucket exists = nil error")
	}
	ix, err := msgindex.Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	e := msgindex.Entry{Tenant: "acme", MessageID: "<p1@example.com>", PostID: "p1", Model: "crm.lead", ThreadID: "42",
		At: time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC)}
	if err := ix.Put(ctx, e); err != nil {
		t.Fatal(err)
	}
	e.MessageID = "p1@example.com"
	tests := []struct {
		tenant, id string
		wantErr    error
	}{
		{"acme", "p1@example.com", nil},
		{"acme", " <p1@example.com> ", nil},
		{"acme", "P1@example.com", msgindex.ErrNotFound},
		{"globex", "p1@example.com", msgindex.ErrNotFound},
		{"acme", "p2@example.com", msgindex.ErrNotFound},
	}
	for _, tt := range tests {
		got, err := msgindex.Lookup(ctx, js, tt.tenant, tt.id)
		if !errors.Is(err, tt.wantErr) || tt.wantErr == nil && got != e {
			t.Errorf("Lookup(%s, %q) = %+v, %v, want %+v, %v", tt.tenant, tt.id, got, err, e, tt.wantErr)
		}
	}
	if _, err := msgindex.Key("acme", "<>"); err == nil {
		t.Error("Key of an empty Message-ID = nil error")
	}
}
