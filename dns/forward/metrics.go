package forward

import (
	"strconv"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Cache entry types, as CoreDNS names them: "denial" covers NXDOMAIN and
// NODATA, and the short-lived SERVFAIL entries.
const (
	typeSuccess = "success"
	typeDenial  = "denial"
)

// Reasons an exchange with an upstream failed.
const (
	reasonTimeout   = "timeout"   // no acceptable answer before the deadline
	reasonNetwork   = "network"   // the socket failed, e.g. ICMP port unreachable
	reasonMalformed = "malformed" // TCP answer that does not parse or does not match
	reasonRcode     = "rcode"     // an extended RCODE we cannot pass on
)

// metrics are the Forwarder's Prometheus series.
type metrics struct {
	hits        [kindCount]prometheus.Counter // by entryKind
	misses      prometheus.Counter
	evictions   prometheus.Counter
	entries     [kindCount]prometheus.Gauge
	bytes       prometheus.Gauge
	prefetches  prometheus.Counter
	servedStale prometheus.Counter

	duration   *prometheus.HistogramVec
	responses  *prometheus.CounterVec
	failures   *prometheus.CounterVec
	mismatched *prometheus.CounterVec
	inFlight   prometheus.Gauge
	coalesced  prometheus.Counter
	rejected   prometheus.Counter

	all []prometheus.Collector
}

func newMetrics() *metrics {
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nodenet_dns_cache_hits_total",
		Help: "Queries answered from fresh cache entries, by entry type (success, denial).",
	}, []string{"type"})
	entries := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nodenet_dns_cache_entries",
		Help: "Responses in the cache, fresh or stale, by entry type (success, denial).",
	}, []string{"type"})
	m := &metrics{
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_dns_cache_misses_total",
			Help: "Queries that found no fresh cache entry.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_dns_cache_evictions_total",
			Help: "Cache entries removed before their time to make room within the entry or memory bound.",
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodenet_dns_cache_size_bytes",
			Help: "Memory the cache entries are accounted for, bounded by the cache's memory limit.",
		}),
		prefetches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_dns_cache_prefetch_total",
			Help: "Popular cache entries refreshed from upstream before they expired.",
		}),
		servedStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_dns_cache_served_stale_total",
			Help: "Queries answered from expired entries because the upstreams failed (RFC 8767).",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodenet_dns_upstream_request_duration_seconds",
			Help:    "Time from sending a query to an upstream to its accepted answer or failure.",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
		}, []string{"upstream"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_dns_upstream_responses_total",
			Help: "Accepted upstream answers by upstream and RCODE.",
		}, []string{"upstream", "rcode"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_dns_upstream_failures_total",
			Help: "Exchanges with an upstream that gave no usable answer, by reason (timeout, network, malformed, rcode).",
		}, []string{"upstream", "reason"}),
		mismatched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_dns_upstream_mismatched_responses_total",
			Help: "UDP datagrams from an upstream ignored because they did not parse or did not match the query's ID and question: late answers, or spoofing attempts.",
		}, []string{"upstream"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodenet_dns_upstream_in_flight",
			Help: "Upstream queries in flight, each shared by every identical client query that arrived meanwhile.",
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_dns_upstream_coalesced_total",
			Help: "Client queries that joined an identical upstream query already in flight instead of sending their own.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodenet_dns_upstream_max_in_flight_rejects_total",
			Help: "Client queries not sent upstream because the in-flight limit was reached; answered stale or SERVFAIL.",
		}),
	}
	for k := range entryKind(kindCount) {
		m.hits[k] = hits.WithLabelValues(k.metricType())
		m.entries[k] = entries.WithLabelValues(k.metricType())
	}
	m.all = []prometheus.Collector{hits, entries, m.misses, m.evictions, m.bytes, m.prefetches, m.servedStale,
		m.duration, m.responses, m.failures, m.mismatched, m.inFlight, m.coalesced, m.rejected}
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range m.all {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// upstreamMetrics are the series of one upstream, resolved once so that an
// exchange does no label lookups.
type upstreamMetrics struct {
	duration   prometheus.Observer
	mismatched prometheus.Counter
	responses  *prometheus.CounterVec
	failures   *prometheus.CounterVec
	label      string
}

func (m *metrics) forUpstream(label string) upstreamMetrics {
	return upstreamMetrics{
		duration:   m.duration.WithLabelValues(label),
		mismatched: m.mismatched.WithLabelValues(label),
		responses:  m.responses,
		failures:   m.failures,
		label:      label,
	}
}

func (u upstreamMetrics) response(rcode int) {
	u.responses.WithLabelValues(u.label, rcodeText(rcode)).Inc()
}

func (u upstreamMetrics) failure(reason string) {
	u.failures.WithLabelValues(u.label, reason).Inc()
}

func rcodeText(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rcode)
}
