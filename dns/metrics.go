package dns

import (
	"github.com/prometheus/client_golang/prometheus"

	mdns "github.com/miekg/dns"
)

// Where an answer came from: the label "source" of the response metrics.
const (
	sourceZone     = "zone"     // the cluster domain or a reverse name it owns
	sourceCache    = "cache"    // the forwarder's cache, on the fast path
	sourceUpstream = "upstream" // the forwarder on the slow path (which may still hit its cache)
	sourceError    = "error"    // a malformed or unsupported request, or the server's own limits
)

// countedTypes get a label value of their own; the rest count as "other", so that a client
// sending random types cannot grow the metrics.
var countedTypes = []uint16{
	mdns.TypeA, mdns.TypeAAAA, mdns.TypeSRV, mdns.TypePTR, mdns.TypeCNAME, mdns.TypeTXT, mdns.TypeMX,
	mdns.TypeNS, mdns.TypeSOA, mdns.TypeHTTPS, mdns.TypeSVCB, mdns.TypeANY,
}

type metrics struct {
	requests  *prometheus.CounterVec // proto, type
	responses *prometheus.CounterVec // rcode, source
	duration  *prometheus.HistogramVec
	inFlight  prometheus.Gauge
	dropped   *prometheus.CounterVec // reason

	// Resolved children, so that a query costs no label lookups.
	requestsBy  map[[2]string]prometheus.Counter
	responsesBy map[responseKey]prometheus.Counter
	durationBy  map[string]prometheus.Observer
}

type responseKey struct {
	rcode  int
	source string
}

var sources = []string{sourceZone, sourceCache, sourceUpstream, sourceError}

func newMetrics() *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_dns_requests_total",
			Help: "DNS requests received, by transport and query type.",
		}, []string{"proto", "type"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_dns_responses_total",
			Help: "DNS responses sent, by response code and where the answer came from (zone, cache, upstream, error).",
		}, []string{"rcode", "source"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodenet_dns_request_duration_seconds",
			Help:    "Time from reading a request to sending its response, by where the answer came from.",
			Buckets: []float64{0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
		}, []string{"source"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodenet_dns_requests_in_flight",
			Help: "Requests waiting for an upstream answer.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodenet_dns_dropped_requests_total",
			Help: "Requests answered with SERVFAIL or not at all because of the server's limits or a malformed packet, by reason.",
		}, []string{"reason"}),
		requestsBy:  map[[2]string]prometheus.Counter{},
		responsesBy: map[responseKey]prometheus.Counter{},
		durationBy:  map[string]prometheus.Observer{},
	}
	for _, source := range sources {
		m.durationBy[source] = m.duration.WithLabelValues(source)
		for rcode := mdns.RcodeSuccess; rcode <= mdns.RcodeRefused; rcode++ {
			m.responsesBy[responseKey{rcode, source}] = m.responses.WithLabelValues(rcodeLabel(rcode), source)
		}
	}
	for _, proto := range []string{"udp", "tcp"} {
		for _, t := range countedTypes {
			m.requestsBy[[2]string{proto, mdns.TypeToString[t]}] = m.requests.WithLabelValues(proto, mdns.TypeToString[t])
		}
		m.requestsBy[[2]string{proto, "other"}] = m.requests.WithLabelValues(proto, "other")
	}
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.responses, m.duration, m.inFlight, m.dropped} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func typeLabel(t uint16) string {
	for _, c := range countedTypes {
		if c == t {
			return mdns.TypeToString[t]
		}
	}
	return "other"
}

func (m *metrics) request(proto string, qtype uint16) {
	m.requestsBy[[2]string{proto, typeLabel(qtype)}].Inc()
}

func (m *metrics) response(rcode int, source string, seconds float64) {
	if c, ok := m.responsesBy[responseKey{rcode, source}]; ok {
		c.Inc()
	} else {
		m.responses.WithLabelValues(rcodeLabel(rcode), source).Inc()
	}
	m.durationBy[source].Observe(seconds)
}

func rcodeLabel(rcode int) string {
	if s, ok := mdns.RcodeToString[rcode]; ok {
		return s
	}
	return "other"
}
