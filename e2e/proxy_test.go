package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nodenet/nodenet/e2e/lab"
)

// svcNS is the namespace of the Services and backends of TestServices; the seed lab keeps its
// own namespaces (default, test) as in hack/demo.
const svcNS = "svc"

// Ports of the test servers inside the pods.
const (
	whoPort  = 8080 // lab.ServeWho: greets with its pod name and the client address it saw
	udpPort  = 5353 // lab.ServeUDPWho
	httpPort = 80   // lab.ServeHTTPWho, standing in for the seed lab's nginx
)

// TestServices checks the Service proxy with real packets on a two-node cluster: a real API
// server and the real endpointslice controller turn Services and published pods into
// EndpointSlices, both daemons program them, and clients in pods and in a namespace outside the
// cluster talk to the Services. One cluster serves every subtest; the daemon restarts come last.
func TestServices(t *testing.T) {
	s := startServiceLab(t)
	t.Run("converge", s.testConverge)
	t.Run("ClusterIP from a pod on either node", s.testClusterIP)
	t.Run("NodePort from outside via each node", s.testNodePort)
	t.Run("load spreads over three backends", s.testSpread)
	t.Run("ClientIP affinity holds then expires", s.testAffinity)
	t.Run("externalTrafficPolicy Local", s.testExternalLocal)
	t.Run("internalTrafficPolicy Local", s.testInternalLocal)
	t.Run("trafficDistribution PreferSameNode", s.testPreferSameNode)
	t.Run("kube-proxy's /healthz for load balancers", s.testProxyHealthz)
	t.Run("no endpoints rejects at once", s.testNoEndpoints)
	t.Run("terminating-only backend serves", s.testTerminating)
	t.Run("UDP backend swap with a fixed client port", s.testUDPSwap)
	t.Run("hairpin", s.testHairpin)
	t.Run("seed lab nginx-svc", s.testSeedLab)
	t.Run("daemon restart keeps connections and rules", s.testRestart)
	s.logProgramming(t)
}

type serviceLab struct {
	c       *cluster
	n1, n2  *lab.Node
	outside *lab.Netns
	pods    map[string]*lab.Pod
	svcs    map[string]*corev1.Service // by namespace/name
	created map[string]time.Time
}

// labPod is a pod of TestServices: where it runs, its labels and what it serves.
type labPod struct {
	name, namespace string
	node            int // 1 or 2
	labels          map[string]string
	serve           func(p *lab.Pod) (func(), error)
	publish         bool // published at start; udp-2 is published by its subtest
}

func serveWho(p *lab.Pod) (func(), error) { return p.NS.ServeWho(":"+strconv.Itoa(whoPort), p.Name) }
func serveUDP(p *lab.Pod) (func(), error) { return p.NS.ServeUDPWho(":"+strconv.Itoa(udpPort), p.Name) }
func serveHTTP(p *lab.Pod) (func(), error) {
	return p.NS.ServeHTTPWho(":"+strconv.Itoa(httpPort), p.Name)
}

var labPods = []labPod{
	{name: "web-1", namespace: svcNS, node: 1, labels: map[string]string{"app": "web", "pod": "web-1"}, serve: serveWho, publish: true},
	{name: "web-2", namespace: svcNS, node: 1, labels: map[string]string{"app": "web", "pod": "web-2"}, serve: serveWho, publish: true},
	{name: "web-3", namespace: svcNS, node: 2, labels: map[string]string{"app": "web", "pod": "web-3"}, serve: serveWho, publish: true},
	{name: "udp-1", namespace: svcNS, node: 1, labels: map[string]string{"app": "udp"}, serve: serveUDP, publish: true},
	{name: "udp-2", namespace: svcNS, node: 2, labels: map[string]string{"app": "udp"}, serve: serveUDP},
	{name: "client-1", node: 1},
	{name: "client-2", node: 2},
	// The seed article's lab, as hack/demo builds it.
	{name: "default-nginx", namespace: "default", node: 1, labels: map[string]string{"app": "default-nginx"}, serve: serveHTTP, publish: true},
	{name: "default-test", namespace: "default", node: 2, labels: map[string]string{"app": "default-test"}, publish: true},
	{name: "test-nginx", namespace: "test", node: 2, labels: map[string]string{"app": "test-nginx"}, serve: serveHTTP, publish: true},
}

func tcpPort(name string, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(target)}
}

func service(ns, name string, typ corev1.ServiceType, selector map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Type: typ, Selector: selector, Ports: ports}}
}

// labServices are created in this order: the seed lab's first, so that its fixed node port
// 30080 is free.
func labServices() []*corev1.Service {
	web := tcpPort("", 80, whoPort)
	sticky := service(svcNS, "sticky", corev1.ServiceTypeClusterIP, map[string]string{"app": "web"}, web)
	sticky.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	sticky.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](affinityTimeout)}}
	// A LoadBalancer (no cloud fills its status) because only those get a healthCheckNodePort.
	etp := service(svcNS, "etp", corev1.ServiceTypeLoadBalancer, map[string]string{"pod": "web-3"}, web)
	etp.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	itp := service(svcNS, "itp", corev1.ServiceTypeClusterIP, map[string]string{"app": "web"}, web)
	itp2 := service(svcNS, "itp-2", corev1.ServiceTypeClusterIP, map[string]string{"pod": "web-3"}, web)
	for _, s := range []*corev1.Service{itp, itp2} {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}
	near := service(svcNS, "near", corev1.ServiceTypeClusterIP, map[string]string{"app": "web"}, web)
	near.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameNode)
	nginxSvc := service("default", "nginx-svc", corev1.ServiceTypeNodePort, map[string]string{"app": "default-nginx"}, tcpPort("", 80, httpPort))
	nginxSvc.Spec.Ports[0].NodePort = 30080
	return []*corev1.Service{
		service("default", "default-svc", corev1.ServiceTypeClusterIP, map[string]string{"app": "default-nginx"}, tcpPort("", 80, httpPort)),
		service("test", "test-svc", corev1.ServiceTypeClusterIP, map[string]string{"app": "test-nginx"}, tcpPort("", 80, httpPort)),
		nginxSvc,
		service(svcNS, "web", corev1.ServiceTypeNodePort, map[string]string{"app": "web"}, web),
		sticky, etp, itp, itp2, near,
		service(svcNS, "empty", corev1.ServiceTypeNodePort, map[string]string{"app": "nobody"},
			tcpPort("tcp", 80, whoPort),
			corev1.ServicePort{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(udpPort)}),
		// No selector: the test writes its EndpointSlice, to control the conditions.
		service(svcNS, "term", corev1.ServiceTypeClusterIP, nil, web),
		service(svcNS, "self", corev1.ServiceTypeClusterIP, map[string]string{"pod": "web-1"}, web),
		service(svcNS, "udp", corev1.ServiceTypeClusterIP, map[string]string{"app": "udp"},
			corev1.ServicePort{Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(udpPort)}),
	}
}

// affinityTimeout is sticky's sessionAffinityConfig.clientIP.timeoutSeconds.
const affinityTimeout = 3

func startServiceLab(t *testing.T) *serviceLab {
	t.Helper()
	ctx := t.Context()
	c := startCluster(t)
	s := &serviceLab{c: c, pods: map[string]*lab.Pod{}, svcs: map[string]*corev1.Service{}, created: map[string]time.Time{}}
	s.n1, s.n2 = c.join(t, "node1", 1, "direct"), c.join(t, "node2", 2, "direct")
	var err error
	if s.outside, err = c.lab.AddOutside(); err != nil {
		t.Fatal(err)
	}
	for _, lp := range labPods {
		n := s.node(lp.node)
		p := c.pod(t, n, lp.name)
		s.pods[lp.name] = p
		if lp.serve != nil {
			stop, err := lp.serve(p)
			if err != nil {
				t.Fatalf("serve in %s: %v", lp.name, err)
			}
			t.Cleanup(stop)
		}
		if lp.publish {
			port := int32(whoPort)
			if lp.namespace != svcNS {
				port = httpPort
			}
			if err := c.cp.PublishPod(ctx, lp.namespace, lp.labels, n, p, port); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, svc := range labServices() {
		created, err := c.cp.CreateService(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		key := svc.Namespace + "/" + svc.Name
		s.svcs[key], s.created[key] = created, time.Now()
	}
	// term's endpoints, as a controller other than the endpointslice controller would write
	// them: web-1 serving while terminating, web-2 terminating and no longer serving.
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "term-1", Namespace: svcNS, Labels: map[string]string{
			discoveryv1.LabelServiceName: "term", discoveryv1.LabelManagedBy: "e2e.nodenet.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(""), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](whoPort)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{s.addr("web-1")}, NodeName: ptr.To("node1"),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}},
			{Addresses: []string{s.addr("web-2")}, NodeName: ptr.To("node1"),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}},
		},
	}
	if _, err := c.cp.Client.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *serviceLab) node(i int) *lab.Node {
	if i == 1 {
		return s.n1
	}
	return s.n2
}

func (s *serviceLab) addr(pod string) string { return s.pods[pod].IPs[0].Addr().String() }

func (s *serviceLab) svc(key string) *corev1.Service {
	svc, ok := s.svcs[key]
	if !ok {
		panic("no service " + key)
	}
	return svc
}

// vip is host:port of a Service's cluster IP and first port.
func (s *serviceLab) vip(key string) string {
	svc := s.svc(key)
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[0].Port)))
}

// nodePort is host:port of a Service's first node port on node n.
func (s *serviceLab) nodePort(key string, n *lab.Node) string {
	return net.JoinHostPort(n.Address, strconv.Itoa(int(s.svc(key).Spec.Ports[0].NodePort)))
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// dialFails dials addr from ns for up to wait and returns how long the dial took and its error
// (nil if it connected).
func dialFails(ctx context.Context, ns *lab.Netns, addr string, wait time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	start := time.Now()
	c, err := ns.Dial(ctx, "tcp", addr)
	if err == nil {
		c.Close()
	}
	return time.Since(start), err
}

// probe is one Service path that must start working; testConverge polls them all at once.
type probe struct {
	svc   string
	what  string
	check func(ctx context.Context) error
}

func whoProbe(svc string, from *lab.Netns, addr string) probe {
	return probe{svc: svc, what: fmt.Sprintf("%s from %s", addr, from.Name), check: func(ctx context.Context) error {
		_, _, err := from.AskWho(ctx, addr)
		return err
	}}
}

func httpProbe(svc string, from *lab.Netns, addr, want string) probe {
	return probe{svc: svc, what: fmt.Sprintf("http://%s/ from %s", addr, from.Name), check: func(ctx context.Context) error {
		code, _, body, err := from.HTTPGet(ctx, "http://"+addr+"/")
		if err != nil {
			return err
		}
		if code != 200 || body != want {
			return fmt.Errorf("got %d %q, want 200 %q", code, body, want)
		}
		return nil
	}}
}

// testConverge waits until every Service works on the paths the subtests use, polling them all
// at once, and logs how long each took from its creation: the endpointslice controller, both
// daemons' informers and syncs together. A figure, not an assertion; the deadline is generous.
func (s *serviceLab) testConverge(t *testing.T) {
	c1, c2 := s.pods["client-1"].NS, s.pods["client-2"].NS
	test := s.pods["default-test"].NS
	probes := []probe{
		whoProbe("svc/web", c1, s.vip("svc/web")),
		whoProbe("svc/web", c2, s.vip("svc/web")),
		whoProbe("svc/web", s.outside, s.nodePort("svc/web", s.n1)),
		whoProbe("svc/web", s.outside, s.nodePort("svc/web", s.n2)),
		whoProbe("svc/sticky", c2, s.vip("svc/sticky")),
		whoProbe("svc/etp", s.outside, s.nodePort("svc/etp", s.n2)),
		whoProbe("svc/itp", c1, s.vip("svc/itp")),
		whoProbe("svc/itp", c2, s.vip("svc/itp")),
		whoProbe("svc/itp-2", c2, s.vip("svc/itp-2")),
		whoProbe("svc/term", c2, s.vip("svc/term")),
		whoProbe("svc/self", c1, s.vip("svc/self")),
		{svc: "svc/empty", what: "TCP reset from " + c1.Name, check: func(ctx context.Context) error {
			if _, err := dialFails(ctx, c1, s.vip("svc/empty"), time.Second); !isRefused(err) {
				return fmt.Errorf("dial: %v, want connection refused", err)
			}
			return nil
		}},
		{svc: "svc/udp", what: "UDP from " + c1.Name, check: func(ctx context.Context) error {
			conn, err := c1.DialUDP(":0", s.vip("svc/udp"))
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = lab.AskUDP(conn, 500*time.Millisecond)
			return err
		}},
		httpProbe("default/default-svc", test, s.vip("default/default-svc"), "default-nginx"),
		httpProbe("test/test-svc", test, s.vip("test/test-svc"), "test-nginx"),
		httpProbe("default/nginx-svc", s.outside, s.nodePort("default/nginx-svc", s.n1), "default-nginx"),
	}
	type result struct {
		took time.Duration
		err  error
	}
	results := make([]result, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			for {
				// Short attempts: a SYN sent before the rules were there sits in conntrack
				// untranslated, and its retransmits with it, until the attempt gives up.
				pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
				err := p.check(pctx)
				pcancel()
				if err == nil {
					results[i].took = time.Since(s.created[p.svc])
					return
				}
				select {
				case <-ctx.Done():
					results[i].err = fmt.Errorf("%v (last: %w)", ctx.Err(), err)
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	var worst time.Duration
	for i, p := range probes {
		if err := results[i].err; err != nil {
			t.Errorf("%s: %s never worked: %v", p.svc, p.what, err)
			continue
		}
		worst = max(worst, results[i].took)
		t.Logf("%-20s %-50s works %v after the Service was created", p.svc, p.what, results[i].took.Round(time.Millisecond))
	}
	t.Logf("every Service path worked %v after its Service was created (API server, endpointslice controller and both daemons)", worst.Round(time.Millisecond))
	if t.Failed() {
		t.FailNow()
	}
}

var webBackends = []string{"web-1", "web-2", "web-3"}

// testClusterIP: a pod on either node reaches the ClusterIP; a backend answers and sees the
// client pod's own address (pod to Service is not masqueraded).
func (s *serviceLab) testClusterIP(t *testing.T) {
	for _, client := range []string{"client-1", "client-2"} {
		for range 6 {
			name, seen, err := s.pods[client].NS.AskWho(t.Context(), s.vip("svc/web"))
			if err != nil {
				t.Fatalf("%s → %s: %v", client, s.vip("svc/web"), err)
			}
			if !slices.Contains(webBackends, name) {
				t.Errorf("%s → web answered by %q, not a backend", client, name)
			}
			if seen != s.addr(client) {
				t.Errorf("%s → web: backend %s saw source %s, want the client pod's %s", client, name, seen, s.addr(client))
			}
		}
	}
}

// testNodePort: a client outside the cluster reaches the NodePort on each node's address; the
// backend sees a node address (Cluster policy masquerades off-cluster sources).
func (s *serviceLab) testNodePort(t *testing.T) {
	for _, n := range []*lab.Node{s.n1, s.n2} {
		hit := map[string]bool{}
		for range 12 {
			name, seen, err := s.outside.AskWho(t.Context(), s.nodePort("svc/web", n))
			if err != nil {
				t.Fatalf("outside → %s: %v", s.nodePort("svc/web", n), err)
			}
			if !slices.Contains(webBackends, name) {
				t.Fatalf("outside → %s answered by %q, not a backend", s.nodePort("svc/web", n), name)
			}
			if seen == lab.OutsideAddr {
				t.Errorf("outside → %s: backend %s saw the client's own address; Cluster policy must masquerade", s.nodePort("svc/web", n), name)
			}
			hit[name] = true
		}
		t.Logf("NodePort on %s reached %v", n.Name, slices.Sorted(maps.Keys(hit)))
	}
}

// testSpread: 60 connections from one pod reach each of the three backends.
func (s *serviceLab) testSpread(t *testing.T) {
	count := map[string]int{}
	for range 60 {
		name, _, err := s.pods["client-1"].NS.AskWho(t.Context(), s.vip("svc/web"))
		if err != nil {
			t.Fatal(err)
		}
		count[name]++
	}
	t.Logf("60 connections: %v", count)
	for _, b := range webBackends {
		if count[b] == 0 {
			t.Errorf("backend %s got none of 60 connections: %v", b, count)
		}
	}
}

// testAffinity: with sessionAffinity ClientIP, a client keeps its backend, also for longer than
// the timeout as long as it keeps connecting; once it pauses longer than the timeout, its entry
// leaves the node's affinity set and the backend is chosen afresh (a third of the time the same
// one again, so it pauses until a different one answers).
func (s *serviceLab) testAffinity(t *testing.T) {
	ctx := t.Context()
	client := s.pods["client-2"].NS
	ask := func() string {
		t.Helper()
		name, _, err := client.AskWho(ctx, s.vip("svc/sticky"))
		if err != nil {
			t.Fatal(err)
		}
		return name
	}
	first := ask()
	for range 20 {
		if got := ask(); got != first {
			t.Fatalf("affinity broken: %s answered after %s", got, first)
		}
	}
	// Keep using it for longer than the timeout: every connection renews the entry.
	for range 4 {
		time.Sleep(affinityTimeout * time.Second / 3)
		if got := ask(); got != first {
			t.Fatalf("affinity broken while in use: %s answered after %s", got, first)
		}
	}
	if got := affinityEntries(t, s.n2, "svc/sticky", s.addr("client-2")); got != 1 {
		t.Errorf("node2 holds %d affinity entries for client-2, want 1", got)
	}
	pause := (affinityTimeout + 1) * time.Second
	held := first
	for round := 1; round <= 10; round++ {
		time.Sleep(pause)
		if got := affinityEntries(t, s.n2, "svc/sticky", s.addr("client-2")); got != 0 {
			t.Fatalf("node2 still holds %d affinity entries for client-2 after a pause of %v (timeout %ds)", got, pause, affinityTimeout)
		}
		if got := ask(); got != held {
			t.Logf("after a pause of %v (timeout %ds) the backend changed from %s to %s (round %d)", pause, affinityTimeout, held, got, round)
			return
		}
	}
	t.Errorf("backend stayed %s across 10 pauses longer than the %ds timeout: affinity never expires", held, affinityTimeout)
}

// affinityEntries counts the affinity sets of a Service (namespace/name) on node n that hold
// addr.
func affinityEntries(t *testing.T, n *lab.Node, svc, addr string) int {
	t.Helper()
	count := 0
	for _, block := range strings.Split(nftTables(t, n), "\n\tset ")[1:] {
		if !strings.HasPrefix(block, "affinity-") || !strings.Contains(block, "-"+svc+"/") {
			continue
		}
		m := nftElements.FindStringSubmatch(block)
		if m == nil {
			continue
		}
		for e := range strings.SplitSeq(m[1], ",") {
			// An element of a dynamic set reads "10.244.1.3 timeout 3s" or just the address.
			if f := strings.Fields(e); len(f) > 0 && f[0] == addr {
				count++
			}
		}
	}
	return count
}

// testExternalLocal: with externalTrafficPolicy Local, the NodePort on the node with the
// endpoint delivers with the client's own address; the other node drops; the health check node
// port answers 200 (1 local endpoint) and 503 (none) with kube-proxy's JSON body.
func (s *serviceLab) testExternalLocal(t *testing.T) {
	ctx := t.Context()
	name, seen, err := s.outside.AskWho(ctx, s.nodePort("svc/etp", s.n2))
	if err != nil {
		t.Fatal(err)
	}
	if name != "web-3" || seen != lab.OutsideAddr {
		t.Errorf("outside → %s: answered by %s seeing %s, want web-3 seeing the client's own %s", s.nodePort("svc/etp", s.n2), name, seen, lab.OutsideAddr)
	}

	np := s.svc("svc/etp").Spec.Ports[0].NodePort
	waitElement(t, s.n1, "no-endpoint-nodeports-v4", fmt.Sprintf("tcp . %d", np))
	if took, err := dialFails(ctx, s.outside, s.nodePort("svc/etp", s.n1), 2*time.Second); !isTimeout(err) {
		t.Errorf("outside → %s (no local endpoint): %v after %v, want the packet dropped (timeout)", s.nodePort("svc/etp", s.n1), err, took)
	}
	// Traffic from a pod or from the node itself is not external: as in kube-proxy, it goes to
	// the endpoints of the whole cluster, also where there is no local one.
	for _, from := range []*lab.Netns{s.pods["client-1"].NS, s.n1.NS} {
		if name, _, err := from.AskWho(ctx, s.nodePort("svc/etp", s.n1)); err != nil || name != "web-3" {
			t.Errorf("%s → %s (no local endpoint): %q %v, want web-3 (pod and node sources use every endpoint)", from.Name, s.nodePort("svc/etp", s.n1), name, err)
		}
	}

	hc := s.svc("svc/etp").Spec.HealthCheckNodePort
	if hc == 0 {
		t.Fatal("the API server allocated no healthCheckNodePort")
	}
	for _, tc := range []struct {
		n     *lab.Node
		code  int
		local int
	}{{s.n2, 200, 1}, {s.n1, 503, 0}} {
		url := fmt.Sprintf("http://%s/healthz", net.JoinHostPort(tc.n.Address, strconv.Itoa(int(hc))))
		var code int
		var hdr map[string][]string
		var body string
		eventually(t, 30*time.Second, "health check node port "+url, func() (err error) {
			code, hdr, body, err = s.outside.HTTPGet(ctx, url)
			return err
		})
		var got struct {
			Service struct {
				Namespace string `json:"namespace"`
				Name      string `json:"name"`
			} `json:"service"`
			LocalEndpoints      int  `json:"localEndpoints"`
			ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Errorf("%s: body %q is not kube-proxy's JSON: %v", url, body, err)
		}
		if code != tc.code || got.LocalEndpoints != tc.local || got.Service.Namespace != svcNS || got.Service.Name != "etp" || !got.ServiceProxyHealthy {
			t.Errorf("%s on %s: %d %s, want %d with localEndpoints %d for svc/etp", url, tc.n.Name, code, body, tc.code, tc.local)
		}
		if ct := hdr["Content-Type"]; !slices.Equal(ct, []string{"application/json"}) {
			t.Errorf("%s: Content-Type %v, want application/json", url, ct)
		}
	}
}

// reached asks the Service svc 30 times from pod client and returns the backends that answered,
// sorted.
func (s *serviceLab) reached(t *testing.T, client, svc string) []string {
	t.Helper()
	hit := map[string]bool{}
	for range 30 {
		name, _, err := s.pods[client].NS.AskWho(t.Context(), s.vip(svc))
		if err != nil {
			t.Fatal(err)
		}
		hit[name] = true
	}
	return slices.Sorted(maps.Keys(hit))
}

// testInternalLocal: with internalTrafficPolicy Local, pods use only their node's endpoints; a
// node without one drops (a timeout, not a reset).
func (s *serviceLab) testInternalLocal(t *testing.T) {
	ctx := t.Context()
	for client, want := range map[string][]string{"client-1": {"web-1", "web-2"}, "client-2": {"web-3"}} {
		if got := s.reached(t, client, "svc/itp"); !slices.Equal(got, want) {
			t.Errorf("%s → itp reached %v, want exactly its node's endpoints %v", client, got, want)
		}
	}
	svc := s.svc("svc/itp-2")
	waitElement(t, s.n1, "no-endpoint-services-v4", fmt.Sprintf("%s . tcp . %d", svc.Spec.ClusterIP, svc.Spec.Ports[0].Port))
	if took, err := dialFails(ctx, s.pods["client-1"].NS, s.vip("svc/itp-2"), 2*time.Second); !isTimeout(err) {
		t.Errorf("client-1 → itp-2 (endpoint only on node2): %v after %v, want the packet dropped (timeout)", err, took)
	}
}

// testPreferSameNode: for trafficDistribution: PreferSameNode the endpointslice controller hints
// each endpoint for its own node, and a client reaches only its node's endpoints, as through
// kube-proxy. It first waits for the hints, so that it tests the proxy, not the controller's pace.
func (s *serviceLab) testPreferSameNode(t *testing.T) {
	ctx := t.Context()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := s.c.cp.Client.DiscoveryV1().EndpointSlices(svcNS).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=near"})
		if err != nil {
			t.Fatal(err)
		}
		hinted, all := 0, 0
		for _, sl := range list.Items {
			for _, ep := range sl.Endpoints {
				all++
				if ep.Hints != nil && len(ep.Hints.ForNodes) > 0 {
					hinted++
				}
			}
		}
		if all == 3 && hinted == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("near's EndpointSlices: %d of %d endpoints hinted for a node after 30 s, want 3 of 3", hinted, all)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for client, want := range map[string][]string{"client-1": {"web-1", "web-2"}, "client-2": {"web-3"}} {
		// The rules follow the hints a moment after the slice shows them.
		var got []string
		for range 50 {
			if got = s.reached(t, client, "svc/near"); slices.Equal(got, want) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s → near reached %v, want exactly its node's endpoints %v", client, got, want)
		}
	}
}

// testProxyHealthz: each node answers kube-proxy's /healthz and /livez on port 10256, as cloud
// load balancers probe it for externalTrafficPolicy: Cluster Services; /healthz turns 503 with
// nodeEligible false while the cluster autoscaler's taint is on the Node, and back to 200 when it
// goes, /livez staying 200.
func (s *serviceLab) testProxyHealthz(t *testing.T) {
	ctx := t.Context()
	type answer struct {
		code int
		body map[string]any
	}
	get := func(n *lab.Node, path string) (answer, error) {
		code, hdr, body, err := s.outside.HTTPGet(ctx, "http://"+net.JoinHostPort(n.Address, "10256")+path)
		if err != nil {
			return answer{}, err
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			return answer{}, fmt.Errorf("%s: Content-Type %q", path, ct)
		}
		a := answer{code: code}
		if err := json.Unmarshal([]byte(body), &a.body); err != nil {
			return answer{}, fmt.Errorf("%s: body %q: %w", path, body, err)
		}
		return a, nil
	}
	expect := func(n *lab.Node, healthz, livez int, eligible bool) {
		t.Helper()
		var hz, lz answer
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if hz, err = get(n, "/healthz"); err == nil {
				lz, err = get(n, "/livez")
			}
			if err == nil && hz.code == healthz && lz.code == livez && hz.body["nodeEligible"] == eligible {
				return
			}
			if time.Now().After(deadline) {
				break
			}
		}
		t.Fatalf("%s: /healthz %d %v, /livez %d %v (%v); want %d with nodeEligible %v, %d", n.Name, hz.code, hz.body, lz.code, lz.body, err, healthz, eligible, livez)
	}
	expect(s.n1, 200, 200, true)
	expect(s.n2, 200, 200, true)

	setTaint := func(ctx context.Context, on bool) {
		t.Helper()
		nodes := s.c.cp.Client.CoreV1().Nodes()
		n, err := nodes.Get(ctx, s.n1.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == "ToBeDeletedByClusterAutoscaler" })
		if on {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "ToBeDeletedByClusterAutoscaler", Value: "1764331200", Effect: corev1.TaintEffectNoSchedule})
		}
		if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setTaint(ctx, true)
	tainted := true
	t.Cleanup(func() { // t's context has ended by then
		if tainted {
			setTaint(context.Background(), false)
		}
	})
	expect(s.n1, 503, 200, false)
	expect(s.n2, 200, 200, true)
	setTaint(ctx, false)
	tainted = false
	expect(s.n1, 200, 200, true)
}

// testNoEndpoints: a Service without endpoints refuses at once, on its ClusterIP and its
// NodePort, for TCP (reset) and UDP (port unreachable).
func (s *serviceLab) testNoEndpoints(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		from *lab.Netns
		addr string
	}{
		{s.pods["client-1"].NS, s.vip("svc/empty")},
		{s.pods["client-2"].NS, s.vip("svc/empty")},
		{s.outside, s.nodePort("svc/empty", s.n1)},
		{s.outside, s.nodePort("svc/empty", s.n2)},
	} {
		took, err := dialFails(ctx, tc.from, tc.addr, 5*time.Second)
		if !isRefused(err) {
			t.Errorf("%s → %s: %v after %v, want connection refused", tc.from.Name, tc.addr, err, took)
			continue
		}
		t.Logf("%s → %s refused in %v", tc.from.Name, tc.addr, took.Round(time.Microsecond))
	}
	svc := s.svc("svc/empty")
	udp := net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[1].Port)))
	conn, err := s.pods["client-1"].NS.DialUDP(":0", udp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := lab.AskUDP(conn, 5*time.Second); !isRefused(err) {
		t.Errorf("UDP client-1 → %s: %v, want port unreachable (connection refused)", udp, err)
	}
}

// testTerminating: term's only serving endpoint is terminating (web-1); it still gets the
// traffic, and web-2, terminating and not serving, gets none.
func (s *serviceLab) testTerminating(t *testing.T) {
	for _, client := range []string{"client-1", "client-2"} {
		for range 10 {
			name, _, err := s.pods[client].NS.AskWho(t.Context(), s.vip("svc/term"))
			if err != nil {
				t.Fatal(err)
			}
			if name != "web-1" {
				t.Fatalf("%s → term answered by %s, want web-1 (serving, terminating) only", client, name)
			}
		}
	}
}

// testUDPSwap: a UDP client keeps one source port while its backend is replaced. The flow stays
// on udp-1 while udp-1 serves, and once udp-1 leaves the Service the same source port reaches
// udp-2, although udp-1 still answers: only the conntrack cleanup moves the flow.
func (s *serviceLab) testUDPSwap(t *testing.T) {
	ctx := t.Context()
	client := s.pods["client-1"].NS
	vip := s.vip("svc/udp")
	conn, err := client.DialUDP(":40053", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() (string, error) { return lab.AskUDP(conn, time.Second) }
	if got, err := ask(); err != nil || got != "udp-1" {
		t.Fatalf("UDP %s from port 40053: %q %v, want udp-1", vip, got, err)
	}
	if err := s.c.cp.PublishPod(ctx, svcNS, map[string]string{"app": "udp"}, s.n2, s.pods["udp-2"], whoPort); err != nil {
		t.Fatal(err)
	}
	// udp-2 is in node1's rules once a fresh client port can reach it.
	eventually(t, 30*time.Second, "a new UDP flow reaches udp-2", func() error {
		c, err := client.DialUDP(":0", vip)
		if err != nil {
			return err
		}
		defer c.Close()
		if got, err := lab.AskUDP(c, 500*time.Millisecond); err != nil || got != "udp-2" {
			return fmt.Errorf("%q %v", got, err)
		}
		return nil
	})
	for range 5 {
		if got, err := ask(); err != nil || got != "udp-1" {
			t.Fatalf("established flow from port 40053 moved while udp-1 serves: %q %v", got, err)
		}
	}
	removed := time.Now()
	if err := s.c.cp.RemovePod(ctx, svcNS, "udp-1"); err != nil {
		t.Fatal(err)
	}
	var answers []string
	eventually(t, 30*time.Second, "the flow from port 40053 reaches udp-2 after udp-1 left", func() error {
		got, err := ask()
		if err != nil {
			return err
		}
		if len(answers) == 0 || answers[len(answers)-1] != got {
			answers = append(answers, got)
		}
		if got != "udp-2" {
			return errors.New("answered by " + got)
		}
		return nil
	})
	t.Logf("same source port answered by %v; udp-2 answered %v after udp-1's pod was deleted", answers, time.Since(removed).Round(time.Millisecond))
	for range 5 {
		if got, err := ask(); err != nil || got != "udp-2" {
			t.Fatalf("after the swap: %q %v, want udp-2", got, err)
		}
	}
}

// testHairpin: a pod reaching a Service whose only backend is itself gets its own answer.
func (s *serviceLab) testHairpin(t *testing.T) {
	name, seen, err := s.pods["web-1"].NS.AskWho(t.Context(), s.vip("svc/self"))
	if err != nil {
		t.Fatal(err)
	}
	if name != "web-1" {
		t.Errorf("web-1 → its own Service answered by %s", name)
	}
	t.Logf("web-1 reached itself through its Service, seen as %s", seen)
}

// testSeedLab checks the seed article's Services as hack/demo creates them: default-svc and
// test-svc from the default-test pod, nginx-svc on its NodePort 30080 of both nodes from that pod
// and from outside the cluster.
func (s *serviceLab) testSeedLab(t *testing.T) {
	ctx := t.Context()
	test := s.pods["default-test"].NS
	get := func(from *lab.Netns, addr, want string) {
		code, _, body, err := from.HTTPGet(ctx, "http://"+addr+"/")
		if err != nil || code != 200 || body != want {
			t.Errorf("curl http://%s/ from %s: %d %q %v, want 200 %q", addr, from.Name, code, body, err, want)
		}
	}
	get(test, s.vip("default/default-svc"), "default-nginx")
	get(test, s.vip("test/test-svc"), "test-nginx")
	get(test, s.vip("default/nginx-svc"), "default-nginx")
	for _, n := range []*lab.Node{s.n1, s.n2} {
		addr := net.JoinHostPort(n.Address, "30080")
		get(test, addr, "default-nginx")
		get(s.outside, addr, "default-nginx")
	}
}

// testRestart restarts node1's daemon, with SIGTERM and then with SIGKILL, while TCP
// connections from a pod on node1 flow through a ClusterIP to a backend on node1 and to one on
// node2. They must go on without a break longer than their echo timeout, and nodenet's tables
// (inet nodenet and the Service shards) after the restarted daemon's first sync must be the
// ones before. Last, a backend leaves while the daemon is down, and the restarted daemon takes
// it out.
func (s *serviceLab) testRestart(t *testing.T) {
	ctx := t.Context()
	n, client := s.n1, s.pods["client-1"].NS
	var flows []*echoFlow
	haveRemote := map[bool]bool{}
	for i := 0; i < 100 && len(flows) < 2; i++ {
		conn, err := client.DialWho(ctx, s.vip("svc/web"))
		if err != nil {
			t.Fatal(err)
		}
		remote := conn.Name == "web-3"
		if haveRemote[remote] {
			conn.Close()
			continue
		}
		haveRemote[remote] = true
		f := startEcho(conn)
		defer f.finish()
		flows = append(flows, f)
	}
	if len(flows) < 2 {
		t.Fatal("100 connections did not reach both a local and a remote backend")
	}
	checkFlowing := func(when string) {
		t.Helper()
		for _, f := range flows {
			if err := f.broken(); err != nil {
				t.Fatalf("%s: the connection to %s broke: %v", when, f.conn.Name, err)
			}
		}
	}
	restart := func(sig syscall.Signal, whileDown func()) {
		t.Helper()
		if err := n.Kill(sig, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		whileDown()
		checkFlowing("daemon stopped with " + sig.String())
		started := time.Now()
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		var objects float64
		eventually(t, 30*time.Second, "first proxy sync after restart", func() error {
			m, err := metrics(ctx, n)
			if err != nil {
				return err
			}
			if m["nodenet_proxy_last_sync_timestamp_seconds"] == 0 {
				return errors.New("no sync yet")
			}
			objects = m[`nodenet_proxy_sync_objects_total{mode="full"}`]
			return nil
		})
		t.Logf("%v: the daemon was down %v; restarted, its first proxy sync was done %v after start and sent %v objects",
			sig, started.Sub(down).Round(time.Millisecond), time.Since(started).Round(time.Millisecond), objects)
		checkFlowing("daemon restarted after " + sig.String())
	}

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		before := nftTables(t, n)
		restart(sig, func() {
			// With the daemon gone the kernel keeps forwarding, and nothing was torn down.
			time.Sleep(500 * time.Millisecond)
			if got := nftTables(t, n); got != before {
				t.Errorf("nodenet's tables changed when the daemon stopped with %v (-before +after):\n%s", sig, cmp.Diff(before, got))
			}
		})
		if got := nftTables(t, n); got != before {
			t.Errorf("nodenet's tables after %v and restart differ from before (-before +after):\n%s", sig, cmp.Diff(before, got))
		}
		if name, _, err := client.AskWho(ctx, s.vip("svc/web")); err != nil || !slices.Contains(webBackends, name) {
			t.Errorf("new connection after %v and restart: %q %v", sig, name, err)
		}
	}

	restart(syscall.SIGKILL, func() {
		if err := s.c.cp.RemovePod(ctx, svcNS, "web-2"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "web-2 leaves web's EndpointSlice", func() error {
			list, err := s.c.cp.Client.DiscoveryV1().EndpointSlices(svcNS).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
			if err != nil {
				return err
			}
			for _, sl := range list.Items {
				for _, e := range sl.Endpoints {
					if slices.Contains(e.Addresses, s.addr("web-2")) {
						return errors.New("still listed")
					}
				}
			}
			return nil
		})
	})
	eventually(t, 30*time.Second, "web-2 no longer chosen after the restart", func() error {
		for range 20 {
			name, _, err := client.AskWho(ctx, s.vip("svc/web"))
			if err != nil {
				return err
			}
			if name == "web-2" {
				return errors.New("web-2 answered")
			}
		}
		return nil
	})
	checkFlowing("after the last restart")
	for _, f := range flows {
		if err := f.finish(); err != nil {
			t.Errorf("the connection to %s broke: %v", f.conn.Name, err)
			continue
		}
		t.Logf("the connection to %s carried %d echoes across three restarts; slowest echo %v", f.conn.Name, f.echoes, f.worst.Round(time.Millisecond))
	}
}

// echoFlow keeps a connection to a ServeWho server busy with an echo every 20ms until finish.
type echoFlow struct {
	conn   *lab.WhoConn
	stop   chan struct{}
	done   chan error // receives the loop's end: its first error, or nil after stop
	err    error
	ended  bool
	echoes int
	worst  time.Duration
}

func startEcho(conn *lab.WhoConn) *echoFlow {
	f := &echoFlow{conn: conn, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		for i := 0; ; i++ {
			select {
			case <-f.stop:
				f.done <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			if err := conn.Echo("ping "+strconv.Itoa(i), 5*time.Second); err != nil {
				f.done <- fmt.Errorf("echo %d: %w", i, err)
				return
			}
			f.echoes++
			f.worst = max(f.worst, time.Since(start))
		}
	}()
	return f
}

// broken returns the loop's error if it has ended.
func (f *echoFlow) broken() error {
	if f.ended {
		return f.err
	}
	select {
	case f.err = <-f.done:
		f.ended = true
	default:
	}
	return f.err
}

// finish stops the loop, closes the connection and returns the loop's error. It may be called
// again.
func (f *echoFlow) finish() error {
	if !f.ended {
		close(f.stop)
		f.err, f.ended = <-f.done, true
	}
	// A second Close returns an error that says only that.
	_ = f.conn.Close()
	return f.err
}

// nftTables lists nodenet's tables in a node's namespace (inet nodenet, and the proxy's Service
// shards inet nodenet-svc-NN) in a canonical form: tables in name order, the elements of every
// set and map sorted (the listing of a hash set follows its buckets) and the remaining lifetimes
// of dynamic elements ("expires 3s") dropped.
func nftTables(t *testing.T, n *lab.Node) string {
	t.Helper()
	out, err := n.NS.Run("nft", "list", "tables")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.SplitSeq(out, "\n") {
		// "table inet nodenet"
		if f := strings.Fields(line); len(f) == 3 && f[1] == "inet" && (f[2] == "nodenet" || strings.HasPrefix(f[2], "nodenet-")) {
			names = append(names, f[2])
		}
	}
	if !slices.Contains(names, "nodenet") {
		t.Fatalf("%s has no table inet nodenet: %s", n.Name, out)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, name := range names {
		out, err := n.NS.Run("nft", "list", "table", "inet", name)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(canonicalNft(out))
	}
	return b.String()
}

var (
	nftElements = regexp.MustCompile(`(?s)elements = \{(.*?)\}`)
	nftExpires  = regexp.MustCompile(` expires [0-9hms.]+`)
)

func canonicalNft(listing string) string {
	listing = nftExpires.ReplaceAllString(listing, "")
	return nftElements.ReplaceAllStringFunc(listing, func(block string) string {
		inner := nftElements.FindStringSubmatch(block)[1]
		var elems []string
		for e := range strings.SplitSeq(inner, ",") {
			if e = strings.Join(strings.Fields(e), " "); e != "" {
				elems = append(elems, e)
			}
		}
		slices.Sort(elems)
		return "elements = {\n\t\t" + strings.Join(elems, ",\n\t\t") + " }"
	})
}

// waitElement waits until a map named mapName in one of node n's tables holds an element whose
// key starts with key.
func waitElement(t *testing.T, n *lab.Node, mapName, key string) {
	t.Helper()
	block := regexp.MustCompile(`(?s)\tmap ` + regexp.QuoteMeta(mapName) + ` \{.*?\n\t\}`)
	eventually(t, 30*time.Second, fmt.Sprintf("%s: %s in map %s", n.Name, key, mapName), func() error {
		for _, m := range block.FindAllString(nftTables(t, n), -1) {
			if strings.Contains(m, key+" ") {
				return nil
			}
		}
		return errors.New("not there")
	})
}

// metrics reads a daemon's Prometheus metrics: each sample line's name with labels, to its value.
func metrics(ctx context.Context, n *lab.Node) (map[string]float64, error) {
	code, _, body, err := n.NS.HTTPGet(ctx, "http://127.0.0.1:9310/metrics")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("metrics: HTTP %d", code)
	}
	m := map[string]float64{}
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}

// logProgramming logs each daemon's network programming latency and sync durations, as
// measured by its own metrics.
func (s *serviceLab) logProgramming(t *testing.T) {
	for _, n := range []*lab.Node{s.n1, s.n2} {
		m, err := metrics(t.Context(), n)
		if err != nil {
			t.Logf("%s: metrics: %v", n.Name, err)
			continue
		}
		line := n.Name + ":"
		for _, h := range []string{"nodenet_proxy_network_programming_duration_seconds", `nodenet_proxy_sync_duration_seconds{mode="partial"}`, `nodenet_proxy_sync_duration_seconds{mode="full"}`} {
			name, labels, _ := strings.Cut(h, "{")
			suffix := ""
			if labels != "" {
				suffix = "{" + labels
			}
			count, sum := m[name+"_count"+suffix], m[name+"_sum"+suffix]
			if count > 0 {
				line += fmt.Sprintf(" %s%s mean %v over %v;", name, suffix, time.Duration(sum/count*float64(time.Second)).Round(time.Microsecond), count)
			}
		}
		t.Log(line)
	}
}
