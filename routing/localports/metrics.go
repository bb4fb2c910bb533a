package localports

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the relay's Prometheus series. A nil *Metrics records nothing.
type Metrics struct {
	ports    *prometheus.GaugeVec
	active   *prometheus.GaugeVec
	failures *prometheus.CounterVec
}

// NewMetrics registers the series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ports: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodenet_hostport_relay_ports",
			Help: "Sockets open for hostPorts on a loopback hostIP, relayed in userspace, by protocol.",
		}, []string{"protocol"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodenet_hostport_relay_active",
			Help: "TCP connections and UDP sessions being relayed to pods through loopback hostPorts, by protocol.",
		}, []string{"protocol"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_hostport_relay_failures_total",
			Help: "Connections or datagrams the loopback hostPort relay could not carry, by protocol and reason (dial: the pod could not be reached; sessions: too many UDP clients).",
		}, []string{"protocol", "reason"}),
	}
	reg.MustRegister(m.ports, m.active, m.failures)
	return m
}

func (m *Metrics) portOpened(proto string) {
	if m != nil {
		m.ports.WithLabelValues(proto).Inc()
	}
}

func (m *Metrics) portClosed(proto string) {
	if m != nil {
		m.ports.WithLabelValues(proto).Dec()
	}
}

func (m *Metrics) started(proto string) {
	if m != nil {
		m.active.WithLabelValues(proto).Inc()
	}
}

func (m *Metrics) ended(proto string) {
	if m != nil {
		m.active.WithLabelValues(proto).Dec()
	}
}

func (m *Metrics) failed(proto, reason string) {
	if m != nil {
		m.failures.WithLabelValues(proto, reason).Inc()
	}
}
