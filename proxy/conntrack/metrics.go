package conntrack

import "github.com/prometheus/client_golang/prometheus"

// metrics are the Cleaner's Prometheus series.
type metrics struct {
	deleted  prometheus.Counter
	failures prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_proxy_conntrack_deleted_total",
			Help: "Stale conntrack entries deleted: UDP and SCTP entries of a Service answered by something other than a serving endpoint.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_proxy_conntrack_cleanup_failures_total",
			Help: "Cleanups that could not read the conntrack table or delete some stale entry; the next cleanup tries again.",
		}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.deleted, m.failures)
}
