package cniexec

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodenet/nodenet/cniexec/wire"
)

// Metrics are the CNI server's Prometheus series.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_cni_requests_total",
			Help: "CNI commands handled by the daemon, by command and CNI error code (0 = success).",
		}, []string{"command", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodenet_cni_request_duration_seconds",
			Help:    "Time the daemon spent on one CNI command, from request decoded to response ready.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"command"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *Metrics) observe(command string, e *wire.Error, took time.Duration) {
	if m == nil {
		return
	}
	switch command {
	case "ADD", "DEL", "CHECK", "STATUS", "GC":
	default:
		command = "other" // bounded label values whatever a client sends
	}
	code := "0"
	if e != nil {
		code = strconv.FormatUint(uint64(e.Code), 10)
	}
	m.requests.WithLabelValues(command, code).Inc()
	m.duration.WithLabelValues(command).Observe(took.Seconds())
}
