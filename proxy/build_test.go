package proxy

import (
	"flag"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nodenet/nodenet/hub"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

var modelCmp = cmp.Options{
	cmp.Comparer(func(x, y netip.Addr) bool { return x == y }),
	cmp.Comparer(func(x, y netip.Prefix) bool { return x == y }),
	cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y }),
}

func smallState() State {
	return State{
		Node:         Node{Name: nodeA, Addresses: []netip.Addr{nodeIP}},
		ClusterCIDRs: []netip.Prefix{pf("10.0.0.0/16")},
		Services: []Service{
			{Namespace: "ns", Name: "web", ClusterIPs: []netip.Addr{a("172.30.0.10")}, Ports: httpPort(30080), SessionAffinityTimeout: 10 * time.Minute},
			{Namespace: "ns", Name: "local", ClusterIPs: []netip.Addr{a("172.30.0.11")}, Ports: httpPort(30081), ExternalLocal: true,
				LoadBalancerIPs: []netip.Addr{a("198.51.100.1")}, LoadBalancerSourceRanges: []netip.Prefix{pf("203.0.113.0/24")}},
			{Namespace: "ns", Name: "empty", ClusterIPs: []netip.Addr{a("172.30.0.13")}, Ports: []ServicePort{{Name: "dns", Protocol: UDP, Port: 53}}},
			{Namespace: "ns", Name: "plain", ClusterIPs: []netip.Addr{a("172.30.0.14")}, Ports: httpPort(0)},
			{Namespace: "ns", Name: "plain2", ClusterIPs: []netip.Addr{a("172.30.0.15")}, Ports: httpPort(0)},
		},
		Endpoints: map[ServiceKey][]Endpoint{
			{"ns", "plain"}:  {ep("10.0.1.3", nodeA, http8080()), ep("10.0.2.3", nodeB, http8080())},
			{"ns", "plain2"}: {ep("10.0.1.4", nodeA, http8080()), ep("10.0.2.4", nodeB, http8080())},
			{"ns", "web"}:    {ep("10.0.1.1", nodeA, http8080()), ep("10.0.2.1", nodeB, http8080())},
			{"ns", "local"}:  {ep("10.0.1.2", nodeA, http8080()), ep("10.0.2.2", nodeB, http8080())},
		},
	}
}

func TestBuildGolden(t *testing.T) {
	for name, st := range map[string]State{"small": smallState(), "empty": {Node: Node{Name: nodeA}}} {
		t.Run(name, func(t *testing.T) {
			got := Build(st).String()
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("model differs from %s (-want +got):\n%s", path, diff)
			}
		})
	}
}

func shuffled(r *rand.Rand, st State) State {
	shuf := func(n int, swap func(i, j int)) { r.Shuffle(n, swap) }
	out := st
	out.Services = slices.Clone(st.Services)
	shuf(len(out.Services), func(i, j int) { out.Services[i], out.Services[j] = out.Services[j], out.Services[i] })
	for i := range out.Services {
		s := &out.Services[i]
		s.Ports = slices.Clone(s.Ports)
		shuf(len(s.Ports), func(i, j int) { s.Ports[i], s.Ports[j] = s.Ports[j], s.Ports[i] })
		s.ClusterIPs = slices.Clone(s.ClusterIPs)
		shuf(len(s.ClusterIPs), func(i, j int) { s.ClusterIPs[i], s.ClusterIPs[j] = s.ClusterIPs[j], s.ClusterIPs[i] })
	}
	out.Endpoints = map[ServiceKey][]Endpoint{}
	for k, eps := range st.Endpoints {
		eps = slices.Clone(eps)
		shuf(len(eps), func(i, j int) { eps[i], eps[j] = eps[j], eps[i] })
		out.Endpoints[k] = eps
	}
	out.ClusterCIDRs = slices.Clone(st.ClusterCIDRs)
	shuf(len(out.ClusterCIDRs), func(i, j int) { out.ClusterCIDRs[i], out.ClusterCIDRs[j] = out.ClusterCIDRs[j], out.ClusterCIDRs[i] })
	return out
}

func TestBuildDeterministic(t *testing.T) {
	st := traceState()
	st.Node.Addresses = []netip.Addr{nodeIP, a("fd00:1::10"), a("192.168.1.10")}
	want := Build(st)
	for seed := range uint64(50) {
		got := Build(shuffled(rand.New(rand.NewPCG(seed, seed)), st))
		if diff := cmp.Diff(want, got, modelCmp); diff != "" {
			t.Fatalf("seed %d: model depends on input order (-first +shuffled):\n%s", seed, diff)
		}
		if got.String() != want.String() {
			t.Fatalf("seed %d: text differs", seed)
		}
	}
}

func TestBuildNames(t *testing.T) {
	long := strings.Repeat("n", 63)
	st := State{
		Node: Node{Name: nodeA},
		Services: []Service{{Namespace: long, Name: long, ClusterIPs: []netip.Addr{a("fd00:30::1")},
			ExternalIPs: []netip.Addr{a("fd00:31::1")}, SessionAffinityTimeout: time.Second,
			Ports: []ServicePort{{Name: strings.Repeat("p", 15), Protocol: SCTP, Port: 65535, NodePort: 32767}}}},
		Endpoints: map[ServiceKey][]Endpoint{{long, long}: {ep("fd00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", nodeA, map[string]int32{strings.Repeat("p", 15): 65535})}},
	}
	m := Build(st)
	var names []string
	for _, c := range m.Chains {
		names = append(names, c.Name)
	}
	for _, s := range m.Sets {
		names = append(names, s.Name)
	}
	seen := map[string]bool{}
	for _, n := range names {
		if len(n) > 255 {
			t.Errorf("name longer than nftables allows (%d): %s", len(n), n)
		}
		if seen[n] {
			t.Errorf("duplicate name %s", n)
		}
		seen[n] = true
	}
	if len(m.Chains) != 14 { // 11 fixed + service, external, endpoint (affinity)
		t.Errorf("%d chains, want 14", len(m.Chains))
	}
}

func TestBuildNodePortFamilies(t *testing.T) {
	// Listed addresses of one family only: no NodePort in the other.
	st := traceState()
	m := Build(st)
	got := pathStrings(Trace(m, []netip.Addr{a("fd00:1::10")}, tcp("fd00:0:0:2::50", "fd00:1::10", 30080)))
	if !cmp.Equal(got, []string{"accept"}) {
		t.Errorf("ipv6 nodeport with only ipv4 node addresses: %v", got)
	}
}

// Only an endpoint that can send to its own Service through this node gets a hairpin pair.
func TestBuildHairpinPairs(t *testing.T) {
	clusterIP := Service{Namespace: "ns", Name: "web", ClusterIPs: []netip.Addr{a("172.30.0.10")}, Ports: httpPort(0)}
	// A NodePort with the Local policy sends pods of every node to every endpoint.
	nodePortLocal := clusterIP
	nodePortLocal.Ports, nodePortLocal.ExternalLocal = httpPort(30080), true
	eps := []Endpoint{
		ep("10.0.1.1", nodeA, http8080()),      // a pod of this node
		ep("10.0.2.1", nodeB, http8080()),      // another node's pod: its node translates its traffic
		ep("10.0.3.1", "", http8080()),         // node unknown
		ep("192.168.0.11", nodeB, http8080()),  // host network, outside the pod ranges
		ep("fd00:0:0:2::1", nodeB, http8080()), // another family: not this port's
	}
	podRanges := []netip.Prefix{pf("10.0.0.0/16")}
	tests := []struct {
		name  string
		svc   Service
		cidrs []netip.Prefix
		want  []netip.Addr
	}{
		{"pod ranges known", clusterIP, podRanges, []netip.Addr{a("10.0.1.1"), a("10.0.3.1"), a("192.168.0.11")}},
		{"pod ranges unknown", clusterIP, nil, []netip.Addr{a("10.0.1.1"), a("10.0.2.1"), a("10.0.3.1"), a("192.168.0.11")}},
		{"nodeport with local policy", nodePortLocal, podRanges, []netip.Addr{a("10.0.1.1"), a("10.0.2.1"), a("10.0.3.1"), a("192.168.0.11")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			facts := Facts{Node: Node{Name: nodeA}, ClusterCIDRs: tc.cidrs}
			got := slices.Compact(slices.SortedFunc(slices.Values(BuildService(facts, tc.svc, eps).Pairs), netip.Addr.Compare))
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
				t.Errorf("pairs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFromObjects(t *testing.T) {
	meta := func(name string, labels map[string]string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: labels}
	}
	svcs := []*corev1.Service{
		{ObjectMeta: meta("web", nil), Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "172.30.0.10", ClusterIPs: []string{"172.30.0.10", "fd00:30::10"},
			ExternalIPs:              []string{"198.51.100.2"},
			LoadBalancerSourceRanges: []string{" 203.0.113.0/24 "},
			ExternalTrafficPolicy:    corev1.ServiceExternalTrafficPolicyLocal,
			HealthCheckNodePort:      31000,
			InternalTrafficPolicy:    ptr.To(corev1.ServiceInternalTrafficPolicyLocal),
			SessionAffinity:          corev1.ServiceAffinityClientIP,
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080},
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
			},
		}, Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{
			{IP: "198.51.100.1"},
			{IP: "198.51.100.9", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)},
			{Hostname: "lb.example"},
		}}}},
		{ObjectMeta: meta("headless", nil), Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
			Ports: []corev1.ServicePort{{Port: 80}}}},
		{ObjectMeta: meta("other-proxy", map[string]string{hub.LabelServiceProxyName: "someone-else"}),
			Spec: corev1.ServiceSpec{ClusterIP: "172.30.0.11", Ports: []corev1.ServicePort{{Port: 80}}}},
		{ObjectMeta: meta("ext", nil), Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}},
	}
	slice := func(name, svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  meta(name, map[string]string{discoveryv1.LabelServiceName: svc}),
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr.To("http"), Port: ptr.To[int32](8080)},
				{Name: ptr.To("dns"), Port: ptr.To[int32](1053)},
			},
			Endpoints: eps,
		}
	}
	epSlices := []*discoveryv1.EndpointSlice{
		slice("web-1", "web",
			discoveryv1.Endpoint{Addresses: []string{"10.0.1.1"}, NodeName: ptr.To(nodeA)}, // nil ready = ready
			discoveryv1.Endpoint{Addresses: []string{"10.0.2.1"}, NodeName: ptr.To(nodeB), Conditions: discoveryv1.EndpointConditions{
				Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)},
				Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z1"}}, ForNodes: []discoveryv1.ForNode{{Name: nodeB}}}},
		),
		slice("web-2", "web", discoveryv1.Endpoint{Addresses: []string{"10.0.1.1"}, NodeName: ptr.To(nodeA)}), // duplicate
		slice("headless-1", "headless", discoveryv1.Endpoint{Addresses: []string{"10.0.3.1"}}),
		slice("orphan", "", discoveryv1.Endpoint{Addresses: []string{"10.0.3.2"}}),
	}
	node := Node{Name: nodeA, Addresses: []netip.Addr{nodeIP}}
	got := fromObjects(svcs, epSlices, node, []netip.Prefix{pf("10.0.0.0/16")}, false)
	ports := map[string]int32{"http": 8080, "dns": 1053}
	want := State{
		Node:         node,
		ClusterCIDRs: []netip.Prefix{pf("10.0.0.0/16")},
		Services: []Service{{
			Namespace: "ns", Name: "web",
			ClusterIPs:               []netip.Addr{a("172.30.0.10"), a("fd00:30::10")},
			ExternalIPs:              []netip.Addr{a("198.51.100.2")},
			LoadBalancerIPs:          []netip.Addr{a("198.51.100.1")},
			LoadBalancerSourceRanges: []netip.Prefix{pf("203.0.113.0/24")},
			Ports: []ServicePort{
				{Name: "http", Protocol: TCP, Port: 80, NodePort: 30080, HealthCheckNodePort: 31000},
				{Name: "dns", Protocol: UDP, Port: 53, HealthCheckNodePort: 31000},
			},
			SessionAffinityTimeout: 3 * time.Hour,
			ExternalLocal:          true,
			InternalLocal:          true,
		}},
		Endpoints: map[ServiceKey][]Endpoint{{"ns", "web"}: {
			{Addr: a("10.0.1.1"), Ports: ports, NodeName: nodeA, Ready: true, Serving: true},
			{Addr: a("10.0.2.1"), Ports: ports, NodeName: nodeB, Serving: true, Terminating: true, ZoneHints: []string{"z1"}, NodeHints: []string{nodeB}},
		}},
	}
	if diff := cmp.Diff(want, got, modelCmp); diff != "" {
		t.Errorf("fromObjects (-want +got):\n%s", diff)
	}
}

// fromObjects converts lists of API objects to a State through the hub's cached form and
// InputFromObjects, the way the runner does one Service at a time: headless, ExternalName and Services claimed by another proxy
// (service.kubernetes.io/service-proxy-name) are skipped; EndpointSlices are
// merged by their kubernetes.io/service-name label (see InputFromObjects).
func fromObjects(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice, node Node, clusterCIDRs []netip.Prefix, masqueradeAll bool) State {
	st := State{
		Endpoints:     map[ServiceKey][]Endpoint{},
		Node:          node,
		ClusterCIDRs:  clusterCIDRs,
		MasqueradeAll: masqueradeAll,
	}
	slicesOf := map[ServiceKey][]*hub.EndpointSlice{}
	for _, sl := range eps {
		if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
			k := ServiceKey{sl.Namespace, name}
			slicesOf[k] = append(slicesOf[k], hub.EndpointSliceOf(sl))
		}
	}
	for _, svc := range svcs {
		in, ok := InputFromObjects(hub.ServiceOf(svc), slicesOf[ServiceKey{svc.Namespace, svc.Name}])
		if !ok {
			continue
		}
		st.Services = append(st.Services, in.Service)
		if len(in.Endpoints) > 0 {
			st.Endpoints[in.Service.Key()] = in.Endpoints
		}
	}
	return st
}

// Endpoint chain and set names must parse as nft identifiers: no colon, no brackets.
func TestEndpointName(t *testing.T) {
	for addr, want := range map[string]string{
		"10.244.1.2":     "10.244.1.2/8080",
		"fd00:244::2":    "fd00.244..2/8080",
		"::ffff:1.2.3.4": "..ffff.1.2.3.4/8080",
	} {
		if got := endpointName(netip.MustParseAddr(addr), 8080); got != want {
			t.Errorf("endpointName(%s) = %q, want %q", addr, got, want)
		}
	}
}
