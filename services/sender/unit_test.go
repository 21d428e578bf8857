package sender

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestRetryDelay(t *testing.T) {
	base, max := 5*time.Minute, 4*time.Hour
	tests := []struct {
		attempt int
		want    time.Duration // before jitter
	}{
		{1, 5 * time.Minute},
		{2, 10 * time.Minute},
		{3, 20 * time.Minute},
		{6, 160 * time.Minute},
		{7, 4 * time.Hour},
		{50, 4 * time.Hour},
	}
	for _, tt := range tests {
		for range 50 {
			got := retryDelay(base, max, tt.attempt)
			if lo, hi := tt.want-tt.want/10, tt.want+tt.want/10; got < lo || got > hi {
				t.Fatalf("retryDelay(%s, %s, %d) = %s, want %s ±10 %%", base, max, tt.attempt, got, tt.want)
			}
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		want class
	}{
		{nil, delivered},
		{&stepError{"RCPT TO", "mx", &smtp.SMTPError{Code: 451}}, temporary},
		{&stepError{"RCPT TO", "mx", &smtp.SMTPError{Code: 550}}, permanent},
		{&stepError{"end of data", "mx", &smtp.SMTPError{Code: 554}}, permanent},
		{&authFailure{&stepError{"AUTH PLAIN", "mx", &smtp.SMTPError{Code: 535}}}, temporary},
		{&refusal{ErrClearTextAuth}, refused},
		{fmt.Errorf("connect: %w", errors.New("connection refused")), temporary},
		{fmt.Errorf("%w: STARTTLS not offered", ErrClearTextAuth), temporary},
		{ErrNoResolver, temporary},
		{&smtp.SMTPError{Code: 556, EnhancedCode: smtp.EnhancedCode{5, 1, 10}}, permanent},
	}
	for _, tt := range tests {
		if got := classify(tt.err); got != tt.want {
			t.Errorf("classify(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
}

func TestPositive(t *testing.T) {
	tests := []struct {
		in      error
		wantNil bool
	}{
		{nil, true},
		{&smtp.SMTPError{Code: 251, Message: "User not local; will forward"}, true},
		{&smtp.SMTPError{Code: 451}, false},
		{&smtp.SMTPError{Code: 550}, false},
		{errors.New("EOF"), false},
	}
	for _, tt := range tests {
		if got := positive(tt.in); (got == nil) != tt.wantNil {
			t.Errorf("positive(%v) = %v, want nil: %v", tt.in, got, tt.wantNil)
		}
	}
}

func TestParseReplyText(t *testing.T) {
	tests := []struct{ in, enhanced, rest string }{
		{"2.0.0 Ok: queued as 4F2", "2.0.0", "Ok: queued as 4F2"},
		{"5.1.1 <x@y>: no such user", "5.1.1", "<x@y>: no such user"},
		{"OK queued", "", "OK queued"},
		{"1.2.3 not a class", "", "1.2.3 not a class"},
		{"2.0 short", "", "2.0 short"},
		{"", "", ""},
	}
	for _, tt := range tests {
		if e, r := parseReplyText(tt.in); e != tt.enhanced || r != tt.rest {
			t.Errorf("parseReplyText(%q) = %q, %q, want %q, %q", tt.in, e, r, tt.enhanced, tt.rest)
		}
	}
}

func TestDeliveredKey(t *testing.T) {
	// Ids a KV key can hold are kept as they are.
	for _, id := range []string{"01JD6Z8Q0M5V7RSW1X2Y3Z4A5B", "p-42.ann", "a_b=c/d"} {
		if got := deliveredKey(id); got != id {
			t.Errorf("deliveredKey(%q) = %q, want %q", id, got, id)
		}
	}
	// Others are hashed into valid, distinct keys.
	seen := map[string]string{}
	for _, id := range []string{"a@b:c", "a@b:d", "has space", ".lead", "tail.", "a..b", "é"} {
		got := deliveredKey(id)
		if !strings.HasPrefix(got, "sha256.") || !kvKey.MatchString(got) {
			t.Errorf("deliveredKey(%q) = %q, want a valid sha256.<hex> key", id, got)
		}
		if other, ok := seen[got]; ok {
			t.Errorf("deliveredKey(%q) = deliveredKey(%q) = %q", id, other, got)
		}
		seen[got] = id
	}
}

func TestTranscript(t *testing.T) {
	var tr transcript
	tr.note("connected to mx:25")
	steps := []struct {
		d    direction
		data string
	}{
		{received, "220 mx ESMTP\r\n"},
		{sent, "EHLO me\r\n"},
		{received, "250-mx\r\n250-AUTH PLAIN\r\n"},
		{received, "250 8BITMIME\r\n"},
		{sent, "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"},
		{received, "235 2.7.0 ok\r\n"},
		{sent, "AUTH LOGIN\r\n"},
		{received, "334 VXNlcm5hbWU6\r\n"},
		{sent, "YWxpY2U=\r\n"},
		{received, "334 UGFzc3dvcmQ6\r\n"},
		{sent, "c2VjcmV0\r\n"},
		{received, "235 ok\r\n"},
		{sent, "MAIL FROM:<b@x>\r\n"},
		{received, "250 ok\r\n"},
		{sent, "DATA\r\n"},
		{received, "354 go\r\n"},
		{sent, "Subject: private\r\n\r\nsecret body\r\n"},
		{sent, ".\r\n"},
		{received, "250 2.0.0 queued\r\n"},
		{sent, "QUI"},
		{sent, "T\r\n"},
	}
	for _, s := range steps {
		tr.record(s.d, []byte(s.data))
	}
	got := tr.String()
	want := strings.Join([]string{
		"* connected to mx:25",
		"S: 220 mx ESMTP",
		"C: EHLO me",
		"S: 250-mx",
		"S: 250-AUTH PLAIN",
		"S: 250 8BITMIME",
		"C: AUTH PLAIN <redacted>",
		"S: 235 2.7.0 ok",
		"C: AUTH LOGIN",
		"S: 334 VXNlcm5hbWU6",
		"C: <redacted>",
		"S: 334 UGFzc3dvcmQ6",
		"C: <redacted>",
		"S: 235 ok",
		"C: MAIL FROM:<b@x>",
		"S: 250 ok",
		"C: DATA",
		"S: 354 go",
		"C: [message: 36 octets, not recorded]",
		"S: 250 2.0.0 queued",
		"C: QUIT",
	}, "\n") + "\n"
	if got != want {
		t.Errorf("transcript =\n%s\nwant\n%s", got, want)
	}
	for _, secret := range []string{"AGFsaWNlAHNlY3JldA", "c2VjcmV0", "secret body", "private"} {
		if strings.Contains(got, secret) {
			t.Errorf("transcript contains %q", secret)
		}
	}
}

func TestTranscriptIsBounded(t *testing.T) {
	var tr transcript
	for range 10000 {
		tr.record(received, []byte("250-a rather long extension line to fill the transcript\r\n"))
	}
	got := tr.String()
	if len(got) > maxTranscript+64 || !strings.HasSuffix(got, "* transcript truncated\n") {
		t.Errorf("transcript of 10000 lines has %d bytes and ends %q; want at most %d and a truncation note",
			len(got), got[len(got)-40:], maxTranscript)
	}
}
