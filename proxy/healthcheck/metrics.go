package healthcheck

import "github.com/prometheus/client_golang/prometheus"

// metrics are the Server's Prometheus series.
type metrics struct {
	listenFailures prometheus.Counter
	services       prometheus.Gauge
	requests       *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		listenFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_proxy_healthcheck_listen_failures_total",
			Help: "Attempts to open a Service's health check node port that failed; each is retried at the next sync.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodenet_proxy_healthcheck_services",
			Help: "Services whose health check node port is open.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_proxy_healthcheck_requests_total",
			Help: "Health check requests answered, by HTTP status code (200 or 503).",
		}, []string{"code"}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.listenFailures, m.services, m.requests)
}
