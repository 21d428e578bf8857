package inbound

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsCountDropsByReason(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.Inc("drop", DropOutOfOffice)
	m.Inc("drop", DropOutOfOffice)
	m.Inc("reply", "token")
	want := `
# HELP chattermail_inbound_messages_total Inbound messages routed, by outcome (reply, bounce, drop) and reason.
# TYPE chattermail_inbound_messages_total counter
chattermail_inbound_messages_total{outcome="drop",reason="out-of-office"} 2
chattermail_inbound_messages_total{outcome="reply",reason="token"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "chattermail_inbound_messages_total"); err != nil {
		t.Error(err)
	}
}
