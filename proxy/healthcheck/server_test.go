package healthcheck_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/nodenet/nodenet/proxy"
	"github.com/nodenet/nodenet/proxy/healthcheck"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	loopback = netip.MustParseAddr("127.0.0.1")
	svcA     = proxy.ServiceKey{Namespace: "ns", Name: "a"}
	svcB     = proxy.ServiceKey{Namespace: "other", Name: "b"}
)

// newServer is a Server on loopback, closed when the test ends so goleak sees no Serve goroutine.
func newServer(t *testing.T, opts ...healthcheck.Option) (*healthcheck.Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s := healthcheck.New(zaptest.NewLogger(t), []netip.Addr{loopback}, append(opts, healthcheck.WithRegisterer(reg))...)
	t.Cleanup(s.Close)
	return s, reg
}

// freePorts returns n distinct loopback ports that were free a moment ago. A port the kernel just
// handed out and took back is unlikely to be handed out again at once.
func freePorts(t *testing.T, n int) []int32 {
	t.Helper()
	var ports []int32
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, int32(ln.Addr().(*net.TCPAddr).Port))
	}
	return ports
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// fetch GETs url through dial and renders the answer as text: status line, the headers kube-proxy
// sets, a blank line, the body.
func fetch(dial dialFunc, method, url string) (string, error) {
	// No keep-alive: the transport keeps no connection, so goleak finds none of its goroutines.
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintln(&b, resp.Status)
	for _, h := range []string{"Content-Type", "X-Content-Type-Options", "X-Load-Balancing-Endpoint-Weight"} {
		fmt.Fprintf(&b, "%s: %s\n", h, resp.Header.Get(h))
	}
	fmt.Fprintf(&b, "\n%s", body)
	return b.String(), nil
}

func get(t *testing.T, port int32, path string) string {
	t.Helper()
	out, err := fetch((&net.Dialer{}).DialContext, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		t.Fatalf("GET port %d: %v", port, err)
	}
	return out
}

// wantClosed fails unless nothing listens on port any more.
func wantClosed(t *testing.T, port int32) {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err == nil {
		c.Close()
		t.Fatalf("port %d still open", port)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial port %d: %v, want connection refused", port, err)
	}
}

// answer is the text fetch renders for an answer of kube-proxy.
func answer(status string, key proxy.ServiceKey, endpoints int, healthy bool) string {
	return fmt.Sprintf(`%s
Content-Type: application/json
X-Content-Type-Options: nosniff
X-Load-Balancing-Endpoint-Weight: %d

{
	"service": {
		"namespace": %q,
		"name": %q
	},
	"localEndpoints": %d,
	"serviceProxyHealthy": %t
}`, status, endpoints, key.Namespace, key.Name, endpoints, healthy)
}

// metricLines renders every nodenet_proxy_healthcheck_ series of reg as sorted "name{labels} value"
// lines.
func metricLines(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var lines []string
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			lines = append(lines, fmt.Sprintf("%s %g", name, v))
		}
	}
	slices.Sort(lines)
	return lines
}

func TestAnswer(t *testing.T) {
	s, reg := newServer(t)
	port := freePorts(t, 1)[0]
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: port})

	// The steps run in order on one Server: each changes what the next starts from.
	for _, tc := range []struct {
		name      string
		endpoints map[proxy.ServiceKey]int
		unhealthy bool
		path      string
		want      string
	}{
		{"no endpoints synced yet", nil, false, "/", answer("503 Service Unavailable", svcA, 0, true)},
		{"local endpoints", map[proxy.ServiceKey]int{svcA: 2, svcB: 5}, false, "/healthz", answer("200 OK", svcA, 2, true)},
		{"any path", map[proxy.ServiceKey]int{svcA: 2}, false, "/some/lb/probe?x=1", answer("200 OK", svcA, 2, true)},
		{"proxy unhealthy", map[proxy.ServiceKey]int{svcA: 2}, true, "/", answer("503 Service Unavailable", svcA, 2, false)},
		{"proxy healthy again", map[proxy.ServiceKey]int{svcA: 1}, false, "/", answer("200 OK", svcA, 1, true)},
		{"missing from the counts", map[proxy.ServiceKey]int{svcB: 3}, false, "/", answer("503 Service Unavailable", svcA, 0, true)},
		{"zero endpoints", map[proxy.ServiceKey]int{svcA: 0}, false, "/", answer("503 Service Unavailable", svcA, 0, true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.endpoints != nil {
				s.SyncEndpoints(tc.endpoints)
			}
			s.SetProxyHealthy(!tc.unhealthy)
			if diff := cmp.Diff(tc.want, get(t, port, tc.path)); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}

	want := []string{
		`nodenet_proxy_healthcheck_listen_failures_total 0`,
		`nodenet_proxy_healthcheck_requests_total{code="200"} 3`,
		`nodenet_proxy_healthcheck_requests_total{code="503"} 4`,
		`nodenet_proxy_healthcheck_services 1`,
	}
	if diff := cmp.Diff(want, metricLines(t, reg)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

func TestAnswerHead(t *testing.T) {
	s, _ := newServer(t)
	port := freePorts(t, 1)[0]
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: port})
	s.SyncEndpoints(map[proxy.ServiceKey]int{svcA: 1})
	got, err := fetch((&net.Dialer{}).DialContext, http.MethodHead, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	want, _, _ := strings.Cut(answer("200 OK", svcA, 1, true), "\n\n")
	if diff := cmp.Diff(want+"\n\n", got); diff != "" {
		t.Errorf("HEAD answer (-want +got):\n%s", diff)
	}
}

// A count synced before the Service's port opens is answered as soon as it does, whatever order
// the daemon calls the two Syncs in.
func TestEndpointsBeforeServices(t *testing.T) {
	s, _ := newServer(t)
	port := freePorts(t, 1)[0]
	s.SyncEndpoints(map[proxy.ServiceKey]int{svcA: 3})
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: port})
	if diff := cmp.Diff(answer("200 OK", svcA, 3, true), get(t, port, "/")); diff != "" {
		t.Errorf("answer (-want +got):\n%s", diff)
	}
}

func TestSyncServices(t *testing.T) {
	s, reg := newServer(t)
	p := freePorts(t, 3)
	s.SyncEndpoints(map[proxy.ServiceKey]int{svcA: 1, svcB: 2})

	s.SyncServices(map[proxy.ServiceKey]int32{svcA: p[0], svcB: p[1]})
	if diff := cmp.Diff(answer("200 OK", svcA, 1, true), get(t, p[0], "/")); diff != "" {
		t.Errorf("A (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(answer("200 OK", svcB, 2, true), get(t, p[1], "/")); diff != "" {
		t.Errorf("B (-want +got):\n%s", diff)
	}

	// The ports swap Services in one sync: each old port is closed before a new one is opened.
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: p[1], svcB: p[0]})
	if diff := cmp.Diff(answer("200 OK", svcA, 1, true), get(t, p[1], "/")); diff != "" {
		t.Errorf("A after swap (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(answer("200 OK", svcB, 2, true), get(t, p[0], "/")); diff != "" {
		t.Errorf("B after swap (-want +got):\n%s", diff)
	}

	// A's port changes: the old one is closed.
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: p[2], svcB: p[0]})
	wantClosed(t, p[1])
	if diff := cmp.Diff(answer("200 OK", svcA, 1, true), get(t, p[2], "/")); diff != "" {
		t.Errorf("A on its new port (-want +got):\n%s", diff)
	}

	// B is removed; an unchanged A keeps answering.
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: p[2]})
	wantClosed(t, p[0])
	if diff := cmp.Diff(answer("200 OK", svcA, 1, true), get(t, p[2], "/")); diff != "" {
		t.Errorf("A after B's removal (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{
		`nodenet_proxy_healthcheck_listen_failures_total 0`,
		`nodenet_proxy_healthcheck_requests_total{code="200"} 6`,
		`nodenet_proxy_healthcheck_services 1`,
	}, metricLines(t, reg)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}

	s.SyncServices(nil)
	wantClosed(t, p[2])
}

// A port that is taken fails alone, is counted, and is opened by the first sync after it frees.
func TestBusyPort(t *testing.T) {
	s, reg := newServer(t)
	p := freePorts(t, 2)
	holder, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	s.SyncEndpoints(map[proxy.ServiceKey]int{svcA: 1, svcB: 1})
	want := map[proxy.ServiceKey]int32{svcA: p[0], svcB: p[1]}

	s.SyncServices(want)
	if diff := cmp.Diff(answer("200 OK", svcB, 1, true), get(t, p[1], "/")); diff != "" {
		t.Errorf("B beside a busy port (-want +got):\n%s", diff)
	}
	s.SyncServices(want)
	if diff := cmp.Diff([]string{
		`nodenet_proxy_healthcheck_listen_failures_total 2`,
		`nodenet_proxy_healthcheck_requests_total{code="200"} 1`,
		`nodenet_proxy_healthcheck_services 1`,
	}, metricLines(t, reg)); diff != "" {
		t.Errorf("metrics while busy (-want +got):\n%s", diff)
	}

	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	s.SyncServices(want)
	if diff := cmp.Diff(answer("200 OK", svcA, 1, true), get(t, p[0], "/")); diff != "" {
		t.Errorf("A once its port is free (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{
		`nodenet_proxy_healthcheck_listen_failures_total 2`,
		`nodenet_proxy_healthcheck_requests_total{code="200"} 2`,
		`nodenet_proxy_healthcheck_services 2`,
	}, metricLines(t, reg)); diff != "" {
		t.Errorf("metrics after retry (-want +got):\n%s", diff)
	}
}

// The same node address given twice (or once IPv4-mapped) is listened on once; a second bind would
// fail every Service.
func TestDuplicateAddresses(t *testing.T) {
	addrs := []netip.Addr{loopback, netip.MustParseAddr("::ffff:127.0.0.1"), loopback}
	s := healthcheck.New(zaptest.NewLogger(t), addrs)
	defer s.Close()
	port := freePorts(t, 1)[0]
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: port})
	if diff := cmp.Diff(answer("503 Service Unavailable", svcA, 0, true), get(t, port, "/")); diff != "" {
		t.Errorf("answer (-want +got):\n%s", diff)
	}
}

// failOnce is a listener whose first Accept fails for good, as when the socket breaks under a
// running server.
type failOnce struct {
	net.Listener
	once *sync.Once
}

func (l failOnce) Accept() (net.Conn, error) {
	err := errors.New("socket broke")
	failed := false
	l.once.Do(func() { failed = true })
	if failed {
		return nil, err
	}
	return l.Listener.Accept()
}

// A port that stops serving on its own is reopened by the next sync.
func TestBrokenPortReopened(t *testing.T) {
	var once sync.Once
	listen := func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		return failOnce{ln, &once}, err
	}
	s, _ := newServer(t, healthcheck.WithListen(listen))
	port := freePorts(t, 1)[0]
	want := map[proxy.ServiceKey]int32{svcA: port}
	s.SyncEndpoints(map[proxy.ServiceKey]int{svcA: 1})
	s.SyncServices(want)

	// The sync that notices the broken port races with the Serve goroutine noting it, so syncs
	// repeat until one has reopened the port.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := fetch((&net.Dialer{}).DialContext, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err == nil {
			if diff := cmp.Diff(answer("200 OK", svcA, 1, true), out); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("port never reopened: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
		s.SyncServices(want)
	}
}

func TestClose(t *testing.T) {
	s, reg := newServer(t)
	p := freePorts(t, 2)
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: p[0], svcB: p[1]})
	s.Close()
	wantClosed(t, p[0])
	wantClosed(t, p[1])
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: p[0]})
	wantClosed(t, p[0])
	if diff := cmp.Diff([]string{
		`nodenet_proxy_healthcheck_listen_failures_total 0`,
		`nodenet_proxy_healthcheck_services 0`,
	}, metricLines(t, reg)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

func TestInvalidPort(t *testing.T) {
	s, reg := newServer(t)
	port := freePorts(t, 1)[0]
	s.SyncServices(map[proxy.ServiceKey]int32{svcA: 0, svcB: port, {Namespace: "ns", Name: "c"}: 70000})
	if diff := cmp.Diff(answer("503 Service Unavailable", svcB, 0, true), get(t, port, "/")); diff != "" {
		t.Errorf("B beside invalid ports (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{
		`nodenet_proxy_healthcheck_listen_failures_total 0`,
		`nodenet_proxy_healthcheck_requests_total{code="503"} 1`,
		`nodenet_proxy_healthcheck_services 1`,
	}, metricLines(t, reg)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}
