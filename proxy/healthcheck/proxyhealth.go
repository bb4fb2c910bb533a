package healthcheck

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ProxyHealth answers kube-proxy's /healthz and /livez (its healthzBindAddress, port 10256 by
// default). Cloud load balancers probe /healthz on every node for Services with
// externalTrafficPolicy: Cluster, and take a node out of rotation on anything but 200; with
// nodenet in kube-proxy's place the port has to answer the same way:
//
//   - the proxy is unhealthy once a change has waited longer than the timeout for a successful
//     sync (Updated): a change the proxy took and is syncing or retrying (Queued), or one it
//     has not even taken yet (the function given to Watch). Without a waiting change it is
//     healthy, also before the first sync: a restarting daemon leaves the rules in the kernel,
//     so the node keeps serving;
//   - /healthz is also 503 while the Node is leaving the cluster (being deleted, or tainted
//     ToBeDeletedByClusterAutoscaler), so that load balancers drain it first; /livez is not.
//
// The bodies are kube-proxy's, byte for byte. Its methods are safe for concurrent use.
type ProxyHealth struct {
	timeout  time.Duration
	now      func() time.Time
	requests *prometheus.CounterVec

	mu           sync.Mutex
	lastUpdated  time.Time
	pendingSince time.Time // the oldest change being synced; zero: none
	untaken      func() time.Time
	leaving      bool
}

// NewProxyHealth returns a ProxyHealth that turns unhealthy when a change waits longer than
// timeout; its request counter is registered on reg unless reg is nil.
func NewProxyHealth(timeout time.Duration, reg prometheus.Registerer) *ProxyHealth {
	p := &ProxyHealth{timeout: timeout, now: time.Now, requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nodenet_proxy_healthz_requests_total",
		Help: "Requests to the proxy's kube-proxy-compatible /healthz and /livez, by path and HTTP status code.",
	}, []string{"path", "code"})}
	if reg != nil {
		reg.MustRegister(p.requests)
	}
	return p
}

// Watch gives the function that says since when changes wait to be taken by the proxy's sync
// loop (hub.ServiceChanges.PendingSince); zero means none.
func (p *ProxyHealth) Watch(untaken func() time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.untaken = untaken
}

// Queued records that changes are being synced; the first time since the last Updated counts.
func (p *ProxyHealth) Queued() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pendingSince.IsZero() {
		p.pendingSince = p.now()
	}
}

// Updated records a successful sync: every change taken so far is programmed.
func (p *ProxyHealth) Updated() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastUpdated, p.pendingSince = p.now(), time.Time{}
}

// SetLeaving records whether the node is leaving the cluster (hub.Node.Leaving).
func (p *ProxyHealth) SetLeaving(leaving bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leaving = leaving
}

// state reads the health at the current time.
func (p *ProxyHealth) state() (healthy, eligible bool, lastUpdated, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now = p.now()
	oldest := p.pendingSince
	if p.untaken != nil {
		if t := p.untaken(); !t.IsZero() && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
	}
	healthy = oldest.IsZero() || now.Sub(oldest) < p.timeout
	return healthy, !p.leaving, p.lastUpdated, now
}

// Handler serves /healthz and /livez.
func (p *ProxyHealth) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		healthy, eligible, last, now := p.state()
		last = p.answer(w, "/healthz", healthy && eligible, last, now)
		fmt.Fprintf(w, `{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v}`, last, now, eligible)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		healthy, _, last, now := p.state()
		last = p.answer(w, "/livez", healthy, last, now)
		fmt.Fprintf(w, `{"lastUpdated": %q,"currentTime": %q}`, last, now)
	})
	return mux
}

// answer writes the headers and status and returns the lastUpdated to report: the current time
// while healthy, as kube-proxy reports it (its older releases meant the last sync loop, which
// ran even without changes).
func (p *ProxyHealth) answer(w http.ResponseWriter, path string, ok bool, last, now time.Time) time.Time {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	code := http.StatusServiceUnavailable
	if ok {
		code, last = http.StatusOK, now
	}
	w.WriteHeader(code)
	p.requests.WithLabelValues(path, fmt.Sprint(code)).Inc()
	return last
}
