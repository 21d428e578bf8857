package sender

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/chattermail/chattermail/platform/testenv"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
)

// TestDirectToMX delivers the mail of a tenant without servers, with no
// relayhost, to the MX hosts of each recipient's domain, as served by an
// in-process DNS server, on an in-process go-smtp server (MXPort) that
// offers STARTTLS with a certificate nobody trusts.
func TestDirectToMX(t *testing.T) {
	ss := startScript(t, func(s *scriptServer) { s.requireTLS = true })
	_, port, _ := net.SplitHostPort(ss.addr)
	dns := testenv.DNS(t,
		"dest.test. 300 IN MX 10 mx.dest.test.",
		"mx.dest.test. 300 IN A 127.0.0.1",
		"implicit.test. 300 IN A 127.0.0.1",
		"null.test. 300 IN MX 0 .",
		"two.test. 300 IN MX 10 mx1.two.test.",
		"two.test. 300 IN MX 20 mx2.two.test.",
		"mx1.two.test. 300 IN A 127.0.0.2", // nothing listens there
		"mx2.two.test. 300 IN A 127.0.0.1",
		"lame.test. 300 IN MX 10 nowhere.lame.test.",
	)
	dns.Fail("flaky.test")
	p, _ := strconv.Atoi(port)
	h := start(t, tenantsYAML(), Options{
		Resolver: resolver.New([]string{dns.Addr()}, time.Second), MXPort: p, RetryBase: time.Hour,
	})
	tests := []struct {
		domain   string
		want     cmv1.Outcome
		code     int32
		enhanced string
		host     string
	}{
		{"dest.test", cmv1.Outcome_OUTCOME_DELIVERED, 250, "2.0.0", "mx.dest.test"},
		{"implicit.test", cmv1.Outcome_OUTCOME_DELIVERED, 250, "2.0.0", "implicit.test"},
		{"two.test", cmv1.Outcome_OUTCOME_DELIVERED, 250, "2.0.0", "mx2.two.test"},
		{"null.test", cmv1.Outcome_OUTCOME_BOUNCED, 556, "5.1.10", "null.test"},
		{"gone.test", cmv1.Outcome_OUTCOME_BOUNCED, 550, "5.4.4", "gone.test"},
		{"lame.test", cmv1.Outcome_OUTCOME_BOUNCED, 550, "5.4.4", "lame.test"},
		{"flaky.test", cmv1.Outcome_OUTCOME_DEFERRED, 0, "", "flaky.test"},
	}
	for _, tt := range tests {
		m := readyMail("m-"+tt.domain, "")
		m.Tenant = "solo"
		m.Envelope.RcptTo = "ann@" + tt.domain
		m.Recipient.Email = m.Envelope.RcptTo
		h.publish(m, m.GetMailId()+":quota")
		ev := h.nextOf(m.GetMailId())
		if ev.GetOutcome() != tt.want {
			t.Errorf("%s: %s (%s), want %s\n%s", tt.domain, ev.GetOutcome(), ev.GetReason(), tt.want, ev.GetTranscript())
			continue
		}
		if r := ev.GetSmtp(); r.GetCode() != tt.code || r.GetEnhancedCode() != tt.enhanced || r.GetHost() != tt.host {
			t.Errorf("%s: reply %v, want %d %s from %s", tt.domain, r, tt.code, tt.enhanced, tt.host)
		}
		if tt.domain == "null.test" && !strings.Contains(ev.GetTranscript(), "null MX (RFC 7505)") {
			t.Errorf("null MX transcript:\n%s", ev.GetTranscript())
		}
	}
	ss.mu.Lock()
	accepted, tlsMails := len(ss.accepted), ss.tlsMails
	ss.mu.Unlock()
	if accepted != 3 || tlsMails != 3 {
		t.Errorf("MX server accepted %d mails, %d over TLS; want 3 and 3 (opportunistic STARTTLS)", accepted, tlsMails)
	}
}
