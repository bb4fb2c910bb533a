package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodenet/nodenet/e2e/lab"
)

// resolveEnv makes the test binary, run inside a pod's namespace, resolve one name with Go's own
// resolver and print the addresses: the second client the issue names, beside dig.
const resolveEnv = "NODENET_E2E_RESOLVE"

// resolveAndExit is called from TestMain.
func resolveAndExit(name string) {
	r := &net.Resolver{PreferGo: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	fmt.Println(strings.Join(addrs, " "))
	os.Exit(0)
}

// External names the upstream server knows.
var upstreamRecords = map[string]string{"www.example.com": "192.0.2.80", "cached.example.com": "192.0.2.81", "search.example.com": "192.0.2.82"}

type dnsLab struct {
	c        *cluster
	n1, n2   *lab.Node
	outside  *lab.Netns
	upstream *lab.UpstreamServer
	client   *lab.Pod // default-test on node2, in namespace default
	nginx    *lab.Pod // default-nginx on node1
	svcs     map[string]*corev1.Service
}

// TestDNS checks the node-local DNS server on a two-node cluster: the seed article's lookups
// with the resolv.conf kubelet writes, Services appearing and disappearing, forwarding and
// caching against an upstream the test runs (cache hits, negative caching, prefetch, serve-stale,
// truncation, spoofed answers), that node addresses do not answer, and no lost query while the
// daemon restarts.
func TestDNS(t *testing.T) {
	d := startDNSLab(t)
	t.Run("seed lab lookups with dig", d.testSeedLookupsDig)
	t.Run("seed lab lookups with Go's resolver", d.testSeedLookupsGo)
	t.Run("Service created then deleted", d.testServiceLifecycle)
	t.Run("forwarding and caching", d.testForwarding)
	t.Run("prefetch of a popular name", d.testPrefetch)
	t.Run("serve stale with the upstream stopped", d.testServeStale)
	t.Run("truncated answer fetched over TCP", d.testTruncation)
	t.Run("spoofed answers ignored", d.testSpoofing)
	t.Run("node addresses do not answer", d.testNotOpenResolver)
	t.Run("no lost query across restarts", d.testRestartUnderLoad)
}

func startDNSLab(t *testing.T) *dnsLab {
	t.Helper()
	ctx := t.Context()
	c := startCluster(t)
	d := &dnsLab{c: c, svcs: map[string]*corev1.Service{}}
	var err error
	if d.outside, err = c.lab.AddOutside(); err != nil {
		t.Fatal(err)
	}
	if d.upstream, err = d.outside.ServeUpstreamDNS(lab.UpstreamDNS, upstreamRecords); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.upstream.Stop)
	d.n1, d.n2 = c.join(t, "node1", 1, "direct"), c.join(t, "node2", 2, "direct")
	d.nginx = c.pod(t, d.n1, "default-nginx")
	d.client = c.pod(t, d.n2, "default-test")
	testNginx := c.pod(t, d.n2, "test-nginx")
	for _, p := range []*lab.Pod{d.nginx, testNginx} {
		stop, err := serveHTTP(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	for _, p := range []struct {
		ns, app string
		node    *lab.Node
		pod     *lab.Pod
	}{{"default", "default-nginx", d.n1, d.nginx}, {"default", "default-test", d.n2, d.client}, {"test", "test-nginx", d.n2, testNginx}} {
		if err := c.cp.PublishPod(ctx, p.ns, map[string]string{"app": p.app}, p.node, p.pod, httpPort); err != nil {
			t.Fatal(err)
		}
	}
	for _, svc := range []*corev1.Service{
		service("default", "default-svc", corev1.ServiceTypeClusterIP, map[string]string{"app": "default-nginx"}, tcpPort("http", 80, httpPort)),
		service("test", "test-svc", corev1.ServiceTypeClusterIP, map[string]string{"app": "test-nginx"}, tcpPort("http", 80, httpPort)),
	} {
		created, err := c.cp.CreateService(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		d.svcs[svc.Namespace+"/"+svc.Name] = created
	}
	return d
}

// dig runs dig with the resolv.conf of a pod in namespace default, from the client pod, and
// returns the answer section's data (+short).
func (d *dnsLab) dig(args ...string) (string, error) {
	out, err := d.client.NS.RunWithResolvConf(lab.PodResolvConf("default"),
		append([]string{"dig", "+short", "+time=2", "+tries=2"}, args...)...)
	return strings.TrimSpace(out), err
}

func (d *dnsLab) testSeedLookupsDig(t *testing.T) {
	defaultIP, testIP := d.svcs["default/default-svc"].Spec.ClusterIP, d.svcs["test/test-svc"].Spec.ClusterIP
	podName := strings.ReplaceAll(d.nginx.IPs[0].Addr().String(), ".", "-") + ".default.pod.cluster.local"
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"full name", defaultIP, []string{"default-svc.default.svc.cluster.local"}},
		{"short name in the same namespace", defaultIP, []string{"+search", "default-svc"}},
		{"short name across namespaces fails", "", []string{"+search", "test-svc"}},
		{"<svc>.<ns> works", testIP, []string{"+search", "test-svc.test"}},
		{"pod A record", d.nginx.IPs[0].Addr().String(), []string{podName}},
		{"SRV of the named port", "0 100 80 default-svc.default.svc.cluster.local.", []string{"SRV", "_http._tcp.default-svc.default.svc.cluster.local"}},
		{"PTR of the cluster IP", "default-svc.default.svc.cluster.local.", []string{"-x", defaultIP}},
		{"schema version", `"1.1.0"`, []string{"TXT", "dns-version.cluster.local"}},
	} {
		// The first lookup may come before the daemons have the Services: allow them a moment.
		var got string
		eventually(t, 10*time.Second, tc.name, func() error {
			var err error
			if got, err = d.dig(tc.args...); err != nil {
				return err
			}
			if got != tc.want {
				return fmt.Errorf("dig %s: got %q, want %q", strings.Join(tc.args, " "), got, tc.want)
			}
			return nil
		})
		t.Logf("%s: dig %s → %q", tc.name, strings.Join(tc.args, " "), got)
	}
	// The answer's TTL is the zone's, 5 s, and the answer is authoritative.
	out, err := d.client.NS.RunWithResolvConf(lab.PodResolvConf("default"), "dig", "+noall", "+answer", "+comments", "default-svc.default.svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "flags: qr aa rd ra") || !regexp.MustCompile(`\s5\s+IN\s+A\s+`+regexp.QuoteMeta(defaultIP)).MatchString(out) {
		t.Errorf("dig output lacks aa or a TTL of 5:\n%s", out)
	}
}

func (d *dnsLab) testSeedLookupsGo(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) (string, error) {
		out, err := d.client.NS.RunWithResolvConf(lab.PodResolvConf("default"), "env", resolveEnv+"="+name, self)
		return strings.TrimSpace(out), err
	}
	for _, tc := range []struct{ name, want string }{
		{"default-svc", d.svcs["default/default-svc"].Spec.ClusterIP},
		{"test-svc.test", d.svcs["test/test-svc"].Spec.ClusterIP},
		{"default-svc.default.svc.cluster.local", d.svcs["default/default-svc"].Spec.ClusterIP},
		{"www.example.com", upstreamRecords["www.example.com"]},
	} {
		got, err := lookup(tc.name)
		if err != nil || got != tc.want {
			t.Errorf("Go resolver, %s: %q (%v), want %q", tc.name, got, err, tc.want)
		}
	}
	if got, err := lookup("test-svc"); err == nil {
		t.Errorf("Go resolver, test-svc from namespace default: %q, want no such host", got)
	}
}

// testServiceLifecycle: a new Service resolves as soon as its rules are live, and a deleted one
// is NXDOMAIN at once (no cached cluster answers).
func (d *dnsLab) testServiceLifecycle(t *testing.T) {
	ctx := t.Context()
	ask := func() (*dns.Msg, error) { return d.ask(ctx, "late-svc.default.svc.cluster.local.", dns.TypeA) }
	svc, err := d.c.cp.CreateService(ctx, service("default", "late-svc", corev1.ServiceTypeClusterIP, map[string]string{"app": "default-nginx"}, tcpPort("", 80, httpPort)))
	if err != nil {
		t.Fatal(err)
	}
	resolvable := eventually(t, 10*time.Second, "the new Service resolves", func() error {
		resp, err := ask()
		if err != nil {
			return err
		}
		if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != svc.Spec.ClusterIP {
			return fmt.Errorf("answer %v", resp.Answer)
		}
		return nil
	})
	// By then its rules are live on the asking pod's node: a connection to the address is
	// accepted, or refused while the endpointslice controller has not published the backend yet
	// (the rule for a Service without endpoints); never lost to a route that knows no Service.
	conn, err := d.client.NS.Dial(ctx, "tcp", net.JoinHostPort(svc.Spec.ClusterIP, "80"))
	switch {
	case err == nil:
		conn.Close()
	case isRefused(err):
		t.Log("the Service resolved before its endpoints were published: refused, as a Service without endpoints is")
	default:
		t.Errorf("connect to the ClusterIP right after it resolved: %v", err)
	}
	t.Logf("created → resolvable in %v", resolvable)
	if err := d.c.cp.Client.CoreV1().Services("default").Delete(ctx, "late-svc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	gone := eventually(t, 10*time.Second, "the deleted Service is NXDOMAIN", func() error {
		resp, err := ask()
		if err != nil {
			return err
		}
		if resp.Rcode != dns.RcodeNameError {
			return fmt.Errorf("rcode %s, answer %v", dns.RcodeToString[resp.Rcode], resp.Answer)
		}
		return nil
	})
	t.Logf("deleted → NXDOMAIN in %v", gone)
}

// ask sends one query from the client pod to the node-local address. The timeout leaves room for
// an answer from stale data, which may wait for the upstream to fail for up to 1.8 s.
func (d *dnsLab) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	var resp *dns.Msg
	err := d.client.NS.Do(func() error {
		c := &dns.Client{Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		var err error
		resp, _, err = c.ExchangeContext(ctx, m, net.JoinHostPort(lab.NodeLocalDNS, "53"))
		return err
	})
	return resp, err
}

// askA asks for name's A records and returns their addresses and the TTL of the first.
func (d *dnsLab) askA(ctx context.Context, name string) (addrs []string, ttl uint32, err error) {
	resp, err := d.ask(ctx, name, dns.TypeA)
	if err != nil {
		return nil, 0, err
	}
	if resp.Rcode != dns.RcodeSuccess {
		return nil, 0, fmt.Errorf("%s: rcode %s", name, dns.RcodeToString[resp.Rcode])
	}
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			addrs = append(addrs, a.A.String())
		}
	}
	if len(addrs) == 0 {
		return nil, 0, fmt.Errorf("%s: no A record in %v", name, resp.Answer)
	}
	return addrs, resp.Answer[0].Header().Ttl, nil
}

// daemonMetrics reads the metrics of the daemon that answers the client pod.
func (d *dnsLab) daemonMetrics(t *testing.T) map[string]float64 {
	t.Helper()
	m, err := metrics(t.Context(), d.n2)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// metricSum adds up a metric's samples over all their labels.
func metricSum(m map[string]float64, name string) float64 {
	var sum float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

// metricDelta is how much a metric grew from before to after, over all its labels.
func metricDelta(before, after map[string]float64, name string) float64 {
	return metricSum(after, name) - metricSum(before, name)
}

func (d *dnsLab) testForwarding(t *testing.T) {
	ctx := t.Context()
	resp, err := d.ask(ctx, "cached.example.com.", dns.TypeA)
	if err != nil || len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != upstreamRecords["cached.example.com"] {
		t.Fatalf("first lookup through the upstream: %v %v", resp, err)
	}
	before := d.upstream.Queries()
	for range 5 {
		if resp, err := d.ask(ctx, "cached.example.com.", dns.TypeA); err != nil || len(resp.Answer) != 1 {
			t.Fatalf("repeated lookup: %v %v", resp, err)
		}
	}
	if n := d.upstream.Queries() - before; n != 0 {
		t.Errorf("cache hit: the upstream saw %d more queries, want 0", n)
	}
	// Negative caching: an NXDOMAIN from upstream is answered from the cache the second time.
	for i := range 2 {
		before = d.upstream.Queries()
		resp, err := d.ask(ctx, "missing.example.com.", dns.TypeA)
		if err != nil || resp.Rcode != dns.RcodeNameError {
			t.Fatalf("NXDOMAIN from upstream: %v %v", resp, err)
		}
		if seen := d.upstream.Queries() - before; seen != int64(1-i) {
			t.Errorf("lookup %d of a missing name: the upstream saw %d queries, want %d", i+1, seen, 1-i)
		}
	}
	// A search-path miss of a pod looking up an external name is answered from the zone:
	// the upstream never sees it.
	before = d.upstream.Queries()
	if got, err := d.dig("+search", "search.example.com"); err != nil || got != upstreamRecords["search.example.com"] {
		t.Errorf("search.example.com through the search path: %q %v", got, err)
	}
	if n := d.upstream.Queries() - before; n != 1 {
		t.Errorf("the upstream saw %d queries for one external lookup through 3 search domains, want 1", n)
	}
}

// testPrefetch asks for a name with a short TTL twenty times a second. Once it has been asked ten
// times and less than a second of its lifetime remains, the forwarder refreshes it from upstream
// before it expires: the refreshed address reaches the client while every answer but the first
// comes from the cache. A lookup must reach the node within that last second, which a starved
// test process may fail to send; such an attempt proves nothing and is repeated with a new name.
func (d *dnsLab) testPrefetch(t *testing.T) {
	const attempts = 3
	for i := range attempts {
		name := fmt.Sprintf("popular-%d.example.com.", i+1)
		if d.prefetchAttempt(t, name) {
			return
		}
		t.Logf("%s: no lookup after ten others was answered in the entry's last second; again with another name", name)
	}
	t.Fatalf("in %d attempts no lookup was answered in an entry's last second", attempts)
}

// prefetchAttempt runs testPrefetch's lookups for name and reports whether one of them came in
// time to trigger the prefetch.
func (d *dnsLab) prefetchAttempt(t *testing.T, name string) bool {
	ctx := t.Context()
	const first, refreshed = "192.0.2.83", "192.0.2.84"
	// A TTL of 1 s is below the forwarder's least of 5 s: the entry lives 5 s.
	d.upstream.Set(name, 1, first)
	before := d.daemonMetrics(t)
	addrs, ttl, err := d.askA(ctx, name)
	if err != nil || !slices.Equal(addrs, []string{first}) {
		t.Fatalf("first lookup: %v %v", addrs, err)
	}
	if ttl != 5 {
		t.Errorf("first answer's TTL is %d; the upstream's 1 s should be raised to the least cached, 5 s", ttl)
	}
	d.upstream.Set(name, 1, refreshed)
	asked, lowestTTL, hitsBeforeLastSecond := 1, ttl, 0
	deadline := time.Now().Add(20 * time.Second)
	for !slices.Equal(addrs, []string{refreshed}) {
		if time.Now().After(deadline) {
			t.Fatalf("after %d lookups the client still gets %v; the upstream saw %+v", asked, addrs, d.upstream.QueriesFor(name))
		}
		time.Sleep(50 * time.Millisecond)
		if addrs, ttl, err = d.askA(ctx, name); err != nil {
			t.Fatalf("lookup %d: %v", asked+1, err)
		}
		asked++
		switch {
		case slices.Equal(addrs, []string{first}):
			if ttl > 1 {
				hitsBeforeLastSecond++
			}
			lowestTTL = min(lowestTTL, ttl)
		case !slices.Equal(addrs, []string{refreshed}):
			t.Fatalf("lookup %d: %v, want %s or %s", asked, addrs, first, refreshed)
		}
	}
	after := d.daemonMetrics(t)
	up := d.upstream.QueriesFor(name)
	misses, prefetches := metricDelta(before, after, "nodenet_dns_cache_misses_total"), metricDelta(before, after, "nodenet_dns_cache_prefetch_total")
	t.Logf("%s: %d lookups; the first address was served down to TTL %d after %d cached answers, then the refreshed one at TTL %d; upstream saw %+v; cache misses %v, prefetches %v",
		name, asked, lowestTTL, hitsBeforeLastSecond, ttl, up, misses, prefetches)
	if lowestTTL > 1 || hitsBeforeLastSecond < 9 {
		return false
	}
	if up != (lab.QueryCount{UDP: 2}) {
		t.Errorf("upstream saw %+v, want the first query and one refresh, over UDP", up)
	}
	if misses != 1 || prefetches != 1 {
		t.Errorf("cache misses %v and prefetches %v, want 1 and 1: only the first lookup may miss the cache", misses, prefetches)
	}
	return true
}

// testServeStale lets a cached name expire while the upstream is stopped: it is still answered,
// from the stale entry, with a TTL of 30 s (RFC 8767).
func (d *dnsLab) testServeStale(t *testing.T) {
	ctx := t.Context()
	const name, addr = "stale.example.com.", "192.0.2.85"
	d.upstream.Set(name, 5, addr)
	addrs, ttl, err := d.askA(ctx, name)
	if err != nil || !slices.Equal(addrs, []string{addr}) {
		t.Fatalf("lookup with the upstream up: %v %v", addrs, err)
	}
	d.upstream.Stop()
	defer func() {
		if err := d.upstream.Start(); err != nil {
			t.Errorf("restart the upstream: %v", err)
		}
	}()
	before := d.daemonMetrics(t)
	// Wait out the entry's lifetime: the answer's TTL is what remains of it, rounded down.
	time.Sleep(time.Duration(ttl+1) * time.Second)
	for i := range 2 {
		addrs, ttl, err := d.askA(ctx, name)
		if err != nil || !slices.Equal(addrs, []string{addr}) {
			t.Fatalf("lookup %d of the expired name with the upstream stopped: %v %v", i+1, addrs, err)
		}
		if ttl != 30 {
			t.Errorf("lookup %d: stale answer with TTL %d, want 30", i+1, ttl)
		}
	}
	after := d.daemonMetrics(t)
	stale := metricDelta(before, after, "nodenet_dns_cache_served_stale_total")
	if stale != 2 {
		t.Errorf("served stale %v times, want 2", stale)
	}
	// The stale answer may have gone out before the exchange with the stopped upstream failed,
	// had the refusal not arrived (a stale answer waits at most 1.8 s): wait for the failure.
	eventually(t, 5*time.Second, "a failed exchange with the stopped upstream", func() error {
		after = d.daemonMetrics(t)
		if metricDelta(before, after, "nodenet_dns_upstream_failures_total") < 1 {
			return errors.New("none counted")
		}
		return nil
	})
	t.Logf("2 lookups after expiry: served stale %v, failed upstream exchanges %v", stale, metricDelta(before, after, "nodenet_dns_upstream_failures_total"))
}

// testTruncation: a name whose answer does not fit 1232 bytes. The upstream truncates it over
// UDP, so the forwarder asks again over TCP and caches every record; a client asking over UDP
// gets a truncated answer from the node, and dig, asking again over TCP, gets them all.
func (d *dnsLab) testTruncation(t *testing.T) {
	ctx := t.Context()
	const name = "many.example.com."
	var want []string
	for i := range 100 {
		want = append(want, fmt.Sprintf("198.51.100.%d", i+1))
	}
	d.upstream.Set(name, 60, want...)

	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	query, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	var n int
	err = d.client.NS.Do(func() error {
		var dialer net.Dialer
		conn, err := dialer.DialContext(ctx, "udp", net.JoinHostPort(lab.NodeLocalDNS, "53"))
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		if _, err := conn.Write(query); err != nil {
			return err
		}
		n, err = conn.Read(buf)
		return err
	})
	if err != nil {
		t.Fatalf("query over UDP: %v", err)
	}
	var resp dns.Msg
	if err := resp.Unpack(buf[:n]); err != nil {
		t.Fatalf("answer over UDP: %v", err)
	}
	if !resp.Truncated || n > 1232 {
		t.Errorf("answer over UDP to a 1232-byte buffer: %d bytes, TC %v, %d records; want TC within 1232 bytes", n, resp.Truncated, len(resp.Answer))
	}
	up := d.upstream.QueriesFor(name)
	if up != (lab.QueryCount{UDP: 1, TCP: 1}) {
		t.Errorf("upstream saw %+v, want one query over UDP, then one over TCP after the truncated answer", up)
	}

	out, err := d.client.NS.RunWithResolvConf(lab.PodResolvConf("default"), "dig", "+time=5", "+tries=1", "+bufsize=1232", "+noall", "+answer", "+comments", name)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, match := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(name)+`\s+\d+\s+IN\s+A\s+(\S+)$`).FindAllStringSubmatch(out, -1) {
		got = append(got, match[1])
	}
	slices.SortFunc(got, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
	if !slices.Equal(got, want) {
		t.Errorf("dig got %d of the %d records:\n%s", len(got), len(want), out)
	}
	retried := strings.Contains(out, "Truncated, retrying in TCP mode")
	if !retried {
		t.Errorf("dig did not retry over TCP:\n%s", out)
	}
	if after := d.upstream.QueriesFor(name); after != up {
		t.Errorf("dig's lookups reached the upstream (%+v, before %+v): the cache holds the full answer", after, up)
	}
	t.Logf("over UDP: %d bytes, TC %v, %d records; upstream saw %+v; dig retried over TCP: %v, got %d records", n, resp.Truncated, len(resp.Answer), up, retried, len(got))
}

// testSpoofing: the upstream precedes its answer with two forged ones from the same address and
// port, one with the wrong ID and one with the wrong question, both naming another address. The
// forwarder ignores them and takes the genuine answer that follows, without asking again.
func (d *dnsLab) testSpoofing(t *testing.T) {
	ctx := t.Context()
	const name, addr = "spoofed.example.com.", "192.0.2.86"
	d.upstream.Set(name, lab.DefaultUpstreamTTL, addr)
	d.upstream.Spoof(name)
	before, forgedBefore := d.daemonMetrics(t), d.upstream.Forged()
	for i := range 2 {
		addrs, _, err := d.askA(ctx, name)
		if err != nil || !slices.Equal(addrs, []string{addr}) {
			t.Errorf("lookup %d: %v %v, want %s (forged: %s)", i+1, addrs, err, addr, lab.ForgedAddr)
		}
	}
	after := d.daemonMetrics(t)
	up, forged := d.upstream.QueriesFor(name), d.upstream.Forged()-forgedBefore
	ignored := metricDelta(before, after, "nodenet_dns_upstream_mismatched_responses_total")
	t.Logf("upstream saw %+v and sent %d forged answers; the node ignored %v", up, forged, ignored)
	if up != (lab.QueryCount{UDP: 1}) {
		t.Errorf("upstream saw %+v, want one query over UDP: the genuine answer is taken and cached", up)
	}
	if forged != 2 || ignored != 2 {
		t.Errorf("%d forged answers sent and %v ignored, want 2 and 2", forged, ignored)
	}
}

// testNotOpenResolver: the server listens on the node-local address only; a node's own address
// answers nothing, from a pod or from outside.
func (d *dnsLab) testNotOpenResolver(t *testing.T) {
	for _, from := range []struct {
		name string
		ns   *lab.Netns
	}{{"pod", d.client.NS}, {"outside", d.outside}} {
		for _, n := range []*lab.Node{d.n1, d.n2} {
			out, err := from.ns.Run("dig", "+time=1", "+tries=1", "@"+n.Address, "default-svc.default.svc.cluster.local")
			if err == nil || strings.Contains(out, "ANSWER SECTION") {
				t.Errorf("dig @%s from %s answered:\n%s", n.Address, from.name, out)
			}
		}
	}
}

// testRestartUnderLoad sends 200 queries a second from a pod while the daemon of its node is
// stopped with SIGTERM and started again, then killed with SIGKILL and started again. A query
// is retried after 1 s, as a resolver with "options timeout:1 attempts:3" would; every query
// must be answered.
func (d *dnsLab) testRestartUnderLoad(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	load, err := lab.StartDNSLoad(ctx, d.client.NS, "default-svc.default.svc.cluster.local.", 200)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := d.n2.Kill(sig, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		time.Sleep(500 * time.Millisecond) // as a container runtime takes a moment to restart it
		runDaemon(t, d.n2)
		t.Logf("%v: daemon down for %v", sig, time.Since(down))
		time.Sleep(time.Second)
	}
	time.Sleep(time.Second)
	cancel()
	r := load.Wait()
	t.Log(r)
	if r.Unanswered != 0 {
		t.Errorf("%d of %d queries were never answered", r.Unanswered, r.Sent)
	}
	if r.Sent < 800 {
		t.Errorf("only %d queries were sent", r.Sent)
	}
}
