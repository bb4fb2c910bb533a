package healthcheck

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestProxyHealth walks the proxy's health through a first sync retried past the timeout, a
// change the sync loop does not take, and the node leaving the cluster, reading /healthz and
// /livez as a load balancer would after each step.
func TestProxyHealth(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	p := NewProxyHealth(time.Minute, reg)
	p.now = func() time.Time { return now }
	h := p.Handler()

	type answer struct {
		code                     int
		lastUpdated, currentTime string
		nodeEligible             *bool
	}
	get := func(path string) answer {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", path, ct)
		}
		if rec.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no X-Content-Type-Options: nosniff", path)
		}
		var body struct {
			LastUpdated  string `json:"lastUpdated"`
			CurrentTime  string `json:"currentTime"`
			NodeEligible *bool  `json:"nodeEligible"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: body %q: %v", path, rec.Body, err)
		}
		return answer{rec.Code, body.LastUpdated, body.CurrentTime, body.NodeEligible}
	}
	stamp := func(t time.Time) string { return t.String() }
	check := func(step string, healthz, livez int, eligible bool, last time.Time) {
		t.Helper()
		hz, lz := get("/healthz"), get("/livez")
		if hz.code != healthz || lz.code != livez {
			t.Errorf("%s: /healthz %d, /livez %d; want %d, %d", step, hz.code, lz.code, healthz, livez)
		}
		if hz.nodeEligible == nil || *hz.nodeEligible != eligible {
			t.Errorf("%s: /healthz nodeEligible %v, want %v", step, hz.nodeEligible, eligible)
		}
		if lz.nodeEligible != nil {
			t.Errorf("%s: /livez says nodeEligible; kube-proxy's does not", step)
		}
		if hz.currentTime != stamp(now) {
			t.Errorf("%s: currentTime %q, want %q", step, hz.currentTime, stamp(now))
		}
		// While healthy the last update reads as now, as kube-proxy's does.
		if want := stamp(last); livez == http.StatusOK && lz.lastUpdated != stamp(now) || livez != http.StatusOK && lz.lastUpdated != want {
			t.Errorf("%s: /livez lastUpdated %q (healthy: now, else %q)", step, lz.lastUpdated, want)
		}
	}

	check("nothing waiting", 200, 200, true, time.Time{})
	p.Queued() // the first sync, which fails and is retried
	now = now.Add(59 * time.Second)
	check("the first sync retried for 59 s", 200, 200, true, time.Time{})
	p.Queued() // a retry does not restart the clock
	now = now.Add(time.Second)
	check("the first sync retried for 60 s", 503, 503, true, time.Time{})
	p.Updated()
	synced := now
	check("synced", 200, 200, true, synced)

	// Changes the sync loop has not taken yet (a loop stuck elsewhere) count from their marking.
	var untaken time.Time
	p.Watch(func() time.Time { return untaken })
	untaken = now
	now = now.Add(59 * time.Second)
	check("a change not taken for 59 s", 200, 200, true, synced)
	now = now.Add(time.Second)
	check("a change not taken for 60 s", 503, 503, true, synced)
	untaken = time.Time{}
	p.Queued()
	check("the change taken, its sync running", 200, 200, true, synced)
	p.Updated()
	check("programmed", 200, 200, true, now)

	p.SetLeaving(true)
	check("node leaving", 503, 200, false, now)
	p.SetLeaving(false)
	check("node staying", 200, 200, true, now)

	if got := testutil.ToFloat64(p.requests.WithLabelValues("/healthz", "503")); got != 3 {
		t.Errorf("nodenet_proxy_healthz_requests_total{path=/healthz,code=503} = %v, want 3", got)
	}
	if n, err := testutil.GatherAndCount(reg, "nodenet_proxy_healthz_requests_total"); err != nil || n != 4 {
		t.Errorf("registered series: %d (%v), want 4 (two paths × two codes)", n, err)
	}
}
