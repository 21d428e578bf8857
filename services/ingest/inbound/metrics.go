package inbound

import "github.com/prometheus/client_golang/prometheus"

// Metrics is a Counter that exports the router's outcomes as the
// Prometheus counter chattermail_inbound_messages_total{outcome, reason}
// (outcome reply, bounce or drop; reason the route or the drop reason).
type Metrics struct{ c *prometheus.CounterVec }

var _ Counter = (*Metrics)(nil)

// NewMetrics registers the inbound counter with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{c: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chattermail_inbound_messages_total",
		Help: "Inbound messages routed, by outcome (reply, bounce, drop) and reason.",
	}, []string{"outcome", "reason"})}
	reg.MustRegister(m.c)
	return m
}

// Inc implements Counter.
func (m *Metrics) Inc(outcome, reason string) { m.c.WithLabelValues(outcome, reason).Inc() }
