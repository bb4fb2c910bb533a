package runner

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	duration    *prometheus.HistogramVec
	programming prometheus.Histogram
	objects     *prometheus.CounterVec
	failures    prometheus.Counter
	repairs     prometheus.Counter
	lastSync    prometheus.Gauge
	rejected    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodenet_proxy_sync_duration_seconds",
			Help:    "Time to bring the Service rules up to date, by mode: partial (changed Services only) or full (compared with the kernel).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"mode"}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nodenet_proxy_network_programming_duration_seconds",
			Help:    "Time from an EndpointSlice's last-change-trigger-time to its rules being live on this node.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		objects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_proxy_sync_objects_total",
			Help: "nftables chains, rules, sets and elements sent, by sync mode.",
		}, []string{"mode"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_proxy_sync_failures_total",
			Help: "Syncs and drift checks that failed; each is retried as a full sync with back-off.",
		}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_proxy_drift_repairs_total",
			Help: "Drift checks that found the kernel's ruleset changed behind nodenet's back and repaired it.",
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodenet_proxy_last_sync_timestamp_seconds",
			Help: "Unix time of the last successful sync.",
		}),
		rejected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodenet_proxy_rejected_services",
			Help: "Services left out because their rules could not be written (see the log).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.duration, m.programming, m.objects, m.failures, m.repairs, m.lastSync, m.rejected)
	}
	return m
}
