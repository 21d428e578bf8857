package bus

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts how handlers' results were settled, by stage and result
// (ack, nak, retry, dead_letter).
type Metrics struct {
	settled *prometheus.CounterVec
}

// NewMetrics registers the bus metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{settled: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chattermail_bus_settled_total",
		Help: "Messages settled by consumers, by stage and result (ack, nak, retry, dead_letter).",
	}, []string{"stage", "result"})}
	reg.MustRegister(m.settled)
	return m
}

// SetMetrics makes the bus count settled messages in m.
func (b *Bus) SetMetrics(m *Metrics) { b.metrics = m }

func (b *Bus) count(stage, result string) {
	if b.metrics != nil {
		b.metrics.settled.WithLabelValues(stage, result).Inc()
	}
}
