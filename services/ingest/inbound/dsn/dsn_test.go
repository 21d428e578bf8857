package dsn_test

import (
	"bytes"
	"errors"
	"net/mail"
	"os"
	"path/filepath"
	"testing"

	"github.com/chattermail/chattermail/services/ingest/inbound/dsn"
)

func TestParseCorpus(t *testing.T) {
	tests := []struct {
		file, rcpt, status, msgID string
		permanent, structured     bool
	}{
		{"postfix_user_unknown.eml", "ann@customer.example", "5.1.1", "p1aaaaaaaaaaaaaaaaaaaaaaaa@example.com", true, true},
		{"exim_mailbox_full_rfc822_headers.eml", "carl@partner.example", "5.2.2", "p1aaaaaaaaaaaaaaaaaaaaaaaa@example.com", true, true},
		{"exchange_recipient_not_found.eml", "ann@customer.example", "5.1.10", "p1aaaaaaaaaaaaaaaaaaaaaaaa@example.com", true, true},
		{"gmail_address_not_found.eml", "dan.gone@gmail.com", "5.1.1", "p1aaaaaaaaaaaaaaaaaaaaaaaa@example.com", true, true},
		{"postfix_delayed_soft.eml", "ann@customer.example", "4.4.1", "", false, true},
		{"qmail_free_text.eml", "erin@partner.example", "5.1.1", "p1aaaaaaaaaaaaaaaaaaaaaaaa@example.com", true, false},
	}
	for _, tt := range tests {
		raw, err := os.ReadFile(filepath.Join("../../testdata/inbound/bounces", tt.file))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		r, err := dsn.Parse(m)
		if err != nil {
			t.Errorf("Parse(%s): %v", tt.file, err)
			continue
		}
		if len(r.Recipients) != 1 {
			t.Errorf("Parse(%s) = %d recipients, want 1", tt.file, len(r.Recipients))
			continue
		}
		rc := r.Recipients[0]
		got := []any{rc.FinalRecipient, rc.Status, r.OriginalMessageID, rc.Permanent(), r.Structured, rc.Failed()}
		want := []any{tt.rcpt, tt.status, tt.msgID, tt.permanent, tt.structured, true}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("Parse(%s) = %v, want %v", tt.file, got, want)
				break
			}
		}
		if rc.DiagnosticCode == "" {
			t.Errorf("Parse(%s): empty Diagnostic-Code", tt.file)
		}
	}
}

func TestParseNotDSN(t *testing.T) {
	m, _ := mail.ReadMessage(bytes.NewReader([]byte("From: a@b.example\r\nSubject: hi\r\n\r\nJust a note.\r\n")))
	if _, err := dsn.Parse(m); !errors.Is(err, dsn.ErrNotDSN) {
		t.Errorf("Parse(plain note) error = %v, want ErrNotDSN", err)
	}
}
