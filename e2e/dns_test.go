package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
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
// caching against an upstream the test runs, that node addresses do not answer, and no lost
// query while the daemon restarts.
func TestDNS(t *testing.T) {
	d := startDNSLab(t)
	t.Run("seed lab lookups with dig", d.testSeedLookupsDig)
	t.Run("seed lab lookups with Go's resolver", d.testSeedLookupsGo)
	t.Run("Service created then deleted", d.testServiceLifecycle)
	t.Run("forwarding and caching", d.testForwarding)
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

// ask sends one query from the client pod to the node-local address.
func (d *dnsLab) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	var resp *dns.Msg
	err := d.client.NS.Do(func() error {
		c := &dns.Client{Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		var err error
		resp, _, err = c.ExchangeContext(ctx, m, net.JoinHostPort(lab.NodeLocalDNS, "53"))
		return err
	})
	return resp, err
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
	// Serve stale: with the upstream gone, a name past its TTL is still answered.
	d.upstream.Stop()
	t.Cleanup(func() {
		var err error
		if d.upstream, err = d.outside.ServeUpstreamDNS(lab.UpstreamDNS, upstreamRecords); err != nil {
			t.Errorf("restart the upstream: %v", err)
		}
	})
	resp, err = d.ask(ctx, "cached.example.com.", dns.TypeA)
	if err != nil || len(resp.Answer) != 1 {
		t.Errorf("cached name with the upstream stopped: %v %v", resp, err)
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
	load, err := startDNSLoad(ctx, d.client.NS, "default-svc.default.svc.cluster.local.", 200)
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
	r := load.wait()
	t.Logf("%d queries: %d answered on the first try, %d after a retry, %d unanswered; slowest answer %v", r.sent, r.firstTry, r.retried, r.unanswered, r.slowest)
	if r.unanswered != 0 {
		t.Errorf("%d of %d queries were never answered", r.unanswered, r.sent)
	}
	if r.sent < 800 {
		t.Errorf("only %d queries were sent", r.sent)
	}
}

type loadResult struct {
	sent, firstTry, retried, unanswered int
	slowest                             time.Duration
}

type dnsLoad struct {
	done   chan struct{}
	result loadResult
}

func (l *dnsLoad) wait() loadResult { <-l.done; return l.result }

// startDNSLoad sends rate queries a second for name from ns to the node-local address until ctx
// ends, each from its own query ID on one UDP socket, retrying unanswered ones after a second,
// three tries in all; then it waits for the last answers and reports.
func startDNSLoad(ctx context.Context, ns *lab.Netns, name string, rate int) (*dnsLoad, error) {
	var conn net.Conn
	err := ns.Do(func() (err error) {
		conn, err = net.Dial("udp", net.JoinHostPort(lab.NodeLocalDNS, "53"))
		return err
	})
	if err != nil {
		return nil, err
	}
	type query struct {
		first, last time.Time
		tries       int
		answered    bool
	}
	var mu sync.Mutex
	queries := map[uint16]*query{}
	var res loadResult
	send := func(id uint16) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = id
		b, _ := m.Pack()
		_, _ = conn.Write(b) // a failed send shows as an unanswered query
	}
	l := &dnsLoad{done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			var m dns.Msg
			if m.Unpack(buf[:n]) != nil || len(m.Answer) == 0 {
				continue
			}
			mu.Lock()
			if q, ok := queries[m.Id]; ok && !q.answered {
				q.answered = true
				if q.tries == 1 {
					res.firstTry++
				} else {
					res.retried++
				}
				res.slowest = max(res.slowest, time.Since(q.first))
			}
			mu.Unlock()
		}
	})
	go func() {
		defer close(l.done)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var next uint16
		retry := func(final bool) {
			mu.Lock()
			defer mu.Unlock()
			for id, q := range queries {
				if !q.answered && q.tries < 3 && time.Since(q.last) >= time.Second {
					q.tries++
					q.last = time.Now()
					send(id)
				} else if final && !q.answered && q.tries >= 3 && time.Since(q.last) >= time.Second {
					q.answered = true // counted below as unanswered
					res.unanswered++
				}
			}
		}
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case now := <-tick.C:
				next++
				mu.Lock()
				queries[next] = &query{first: now, last: now, tries: 1}
				res.sent++
				send(next)
				mu.Unlock()
				retry(false)
			}
		}
		// Let the last queries be answered or run out of tries.
		deadline := time.Now().Add(4 * time.Second)
		for time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			retry(true)
		}
		conn.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, q := range queries {
			if !q.answered {
				res.unanswered++
			}
		}
		l.result = res
	}()
	return l, nil
}
