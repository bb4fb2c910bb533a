package proxy

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	a  = netip.MustParseAddr
	pf = netip.MustParsePrefix
)

const nodeA, nodeB = "node-a", "node-b"

var nodeIP = a("192.168.0.10")

func ep(addr, node string, ports map[string]int32) Endpoint {
	return Endpoint{Addr: a(addr), NodeName: node, Ports: ports, Ready: true, Serving: true}
}

func http8080() map[string]int32 { return map[string]int32{"http": 8080} }

func httpPort(nodePort int32) []ServicePort {
	return []ServicePort{{Name: "http", Protocol: TCP, Port: 80, NodePort: nodePort}}
}

// traceState is a node with a bit of everything.
func traceState() State {
	return State{
		Node:         Node{Name: nodeA, Addresses: []netip.Addr{nodeIP}},
		ClusterCIDRs: []netip.Prefix{pf("10.0.0.0/16"), pf("fd00::/48")},
		Services: []Service{
			{Namespace: "ns", Name: "web", ClusterIPs: []netip.Addr{a("172.30.0.10")}, Ports: httpPort(30080)},
			{Namespace: "ns", Name: "local", ClusterIPs: []netip.Addr{a("172.30.0.11")}, Ports: httpPort(30081), ExternalLocal: true},
			{Namespace: "ns", Name: "remote", ClusterIPs: []netip.Addr{a("172.30.0.14")}, Ports: httpPort(30082), ExternalLocal: true},
			{Namespace: "ns", Name: "itp", ClusterIPs: []netip.Addr{a("172.30.0.12")}, Ports: httpPort(0), InternalLocal: true},
			{Namespace: "ns", Name: "itp-remote", ClusterIPs: []netip.Addr{a("172.30.0.15")}, Ports: httpPort(0), InternalLocal: true},
			{Namespace: "ns", Name: "empty", ClusterIPs: []netip.Addr{a("172.30.0.13")}, Ports: []ServicePort{
				{Name: "http", Protocol: TCP, Port: 80},
				{Name: "syslog", Protocol: UDP, Port: 514},
			}},
			{Namespace: "ns", Name: "term", ClusterIPs: []netip.Addr{a("172.30.0.16")}, Ports: httpPort(0)},
			{Namespace: "ns", Name: "sticky", ClusterIPs: []netip.Addr{a("172.30.0.17")}, Ports: httpPort(0), SessionAffinityTimeout: 3 * time.Hour},
			{
				Namespace: "ns", Name: "lb", ClusterIPs: []netip.Addr{a("172.30.0.18")}, Ports: httpPort(30083),
				LoadBalancerIPs:          []netip.Addr{a("198.51.100.1")},
				LoadBalancerSourceRanges: []netip.Prefix{pf("203.0.113.0/24")},
				ExternalIPs:              []netip.Addr{a("198.51.100.2")},
			},
			{Namespace: "ns", Name: "dns", ClusterIPs: []netip.Addr{a("172.30.0.53")}, Ports: []ServicePort{
				{Name: "dns", Protocol: UDP, Port: 53},
				{Name: "dns-tcp", Protocol: TCP, Port: 53},
				{Name: "metrics", Protocol: TCP, Port: 9153},
			}},
			{Namespace: "ns", Name: "dual", ClusterIPs: []netip.Addr{a("fd00:30::10"), a("172.30.0.20")}, Ports: httpPort(0)},
		},
		Endpoints: map[ServiceKey][]Endpoint{
			{"ns", "web"}: {
				ep("10.0.1.1", nodeA, http8080()), ep("10.0.2.1", nodeB, http8080()), ep("10.0.3.1", "node-c", http8080()),
			},
			{"ns", "local"}:      {ep("10.0.1.2", nodeA, http8080()), ep("10.0.2.2", nodeB, http8080())},
			{"ns", "remote"}:     {ep("10.0.2.4", nodeB, http8080())},
			{"ns", "itp"}:        {ep("10.0.1.3", nodeA, http8080()), ep("10.0.2.3", nodeB, http8080())},
			{"ns", "itp-remote"}: {ep("10.0.2.5", nodeB, http8080())},
			{"ns", "term"}: {
				{Addr: a("10.0.1.6"), NodeName: nodeA, Ports: http8080(), Serving: true, Terminating: true},
				{Addr: a("10.0.2.6"), NodeName: nodeB, Ports: http8080(), Terminating: true},
			},
			{"ns", "sticky"}: {ep("10.0.1.7", nodeA, http8080()), ep("10.0.2.7", nodeB, http8080())},
			{"ns", "lb"}:     {ep("10.0.2.8", nodeB, http8080())},
			{"ns", "dns"}: {
				ep("10.0.1.9", nodeA, map[string]int32{"dns": 1053, "dns-tcp": 2053, "metrics": 9153}),
			},
			{"ns", "dual"}: {ep("10.0.1.10", nodeA, http8080()), ep("fd00:0:0:1::10", nodeA, http8080())},
		},
	}
}

func tcp(src, dst string, port uint16) Packet {
	return Packet{Src: a(src), Dst: a(dst), Proto: TCP, DPort: port}
}

func udp(src, dst string, port uint16) Packet {
	return Packet{Src: a(src), Dst: a(dst), Proto: UDP, DPort: port}
}

func fromNode(p Packet) Packet { p.Local = true; return p }

func TestTrace(t *testing.T) {
	m := Build(traceState())
	const outside = "203.0.113.5"
	tests := []struct {
		name string
		pkt  Packet
		want []string
	}{
		{"clusterip from pod", tcp("10.0.1.50", "172.30.0.10", 80),
			[]string{"dnat 10.0.1.1:8080", "dnat 10.0.2.1:8080", "dnat 10.0.3.1:8080"}},
		{"clusterip from off-cluster source", tcp(outside, "172.30.0.10", 80),
			[]string{"dnat 10.0.1.1:8080 masquerade", "dnat 10.0.2.1:8080 masquerade", "dnat 10.0.3.1:8080 masquerade"}},
		{"clusterip wrong port passes untouched", tcp("10.0.1.50", "172.30.0.10", 81), []string{"accept"}},
		{"hairpin", tcp("10.0.1.1", "172.30.0.10", 80),
			[]string{"dnat 10.0.1.1:8080 masquerade", "dnat 10.0.2.1:8080", "dnat 10.0.3.1:8080"}},
		{"nodeport from outside, cluster policy", tcp(outside, "192.168.0.10", 30080),
			[]string{"dnat 10.0.1.1:8080 masquerade", "dnat 10.0.2.1:8080 masquerade", "dnat 10.0.3.1:8080 masquerade"}},
		{"nodeport on another address is not ours", tcp(outside, "192.168.0.99", 30080), []string{"accept"}},
		{"nodeport from the node itself", fromNode(tcp("192.168.0.10", "192.168.0.10", 30080)),
			[]string{"dnat 10.0.1.1:8080 masquerade", "dnat 10.0.2.1:8080 masquerade", "dnat 10.0.3.1:8080 masquerade"}},
		{"etp local nodeport: local endpoint only, source kept", tcp(outside, "192.168.0.10", 30081),
			[]string{"dnat 10.0.1.2:8080"}},
		{"etp local nodeport from a pod uses every endpoint", tcp("10.0.2.50", "192.168.0.10", 30081),
			[]string{"dnat 10.0.1.2:8080", "dnat 10.0.2.2:8080"}},
		{"etp local nodeport from another node's pod that is an endpoint hairpins", tcp("10.0.2.2", "192.168.0.10", 30081),
			[]string{"dnat 10.0.1.2:8080", "dnat 10.0.2.2:8080 masquerade"}},
		{"etp local nodeport from the node is masqueraded", fromNode(tcp("192.168.0.10", "192.168.0.10", 30081)),
			[]string{"dnat 10.0.1.2:8080 masquerade", "dnat 10.0.2.2:8080 masquerade"}},
		{"etp local clusterip still cluster-wide", tcp("10.0.1.50", "172.30.0.11", 80),
			[]string{"dnat 10.0.1.2:8080", "dnat 10.0.2.2:8080"}},
		{"etp local without local endpoint drops", tcp(outside, "192.168.0.10", 30082), []string{"drop"}},
		{"etp local without local endpoint: nodeport from a pod uses every endpoint", tcp("10.0.1.50", "192.168.0.10", 30082),
			[]string{"dnat 10.0.2.4:8080"}},
		{"etp local without local endpoint: nodeport from the node is masqueraded", fromNode(tcp("192.168.0.10", "192.168.0.10", 30082)),
			[]string{"dnat 10.0.2.4:8080 masquerade"}},
		{"etp local without local endpoint: clusterip works", tcp("10.0.1.50", "172.30.0.14", 80),
			[]string{"dnat 10.0.2.4:8080"}},
		{"itp local", tcp("10.0.2.50", "172.30.0.12", 80), []string{"dnat 10.0.1.3:8080"}},
		{"itp local from off-cluster source", tcp(outside, "172.30.0.12", 80), []string{"dnat 10.0.1.3:8080 masquerade"}},
		{"ipv6 clusterip from off-cluster source", tcp("2001:db8::5", "fd00:30::10", 80), []string{"dnat [fd00:0:0:1::10]:8080 masquerade"}},
		{"itp local without local endpoint drops", tcp("10.0.1.50", "172.30.0.15", 80), []string{"drop"}},
		{"no endpoints tcp rejects with reset", tcp("10.0.1.50", "172.30.0.13", 80), []string{"reject with tcp reset"}},
		{"no endpoints udp rejects with port unreachable", udp("10.0.1.50", "172.30.0.13", 514),
			[]string{"reject with icmpx port-unreachable"}},
		{"no endpoints from the node rejects", fromNode(tcp("192.168.0.10", "172.30.0.13", 80)),
			[]string{"reject with tcp reset"}},
		{"terminating-only backend still serves", tcp("10.0.1.50", "172.30.0.16", 80), []string{"dnat 10.0.1.6:8080"}},
		{"lb ip from allowed range", tcp(outside, "198.51.100.1", 80), []string{"dnat 10.0.2.8:8080 masquerade"}},
		{"lb ip from denied source", tcp("192.0.2.9", "198.51.100.1", 80), []string{"drop"}},
		{"external ip is not firewalled", tcp("192.0.2.9", "198.51.100.2", 80), []string{"dnat 10.0.2.8:8080 masquerade"}},
		{"nodeport bypasses source ranges", tcp("192.0.2.9", "192.168.0.10", 30083), []string{"dnat 10.0.2.8:8080 masquerade"}},
		{"udp 53", udp("10.0.1.50", "172.30.0.53", 53), []string{"dnat 10.0.1.9:1053"}},
		{"tcp 53", tcp("10.0.1.50", "172.30.0.53", 53), []string{"dnat 10.0.1.9:2053"}},
		{"second port", tcp("10.0.1.50", "172.30.0.53", 9153), []string{"dnat 10.0.1.9:9153"}},
		{"ipv6 clusterip", tcp("fd00:0:0:2::50", "fd00:30::10", 80), []string{"dnat [fd00:0:0:1::10]:8080"}},
		{"ipv4 side of dual stack", tcp("10.0.2.50", "172.30.0.20", 80), []string{"dnat 10.0.1.10:8080"}},
		{"ipv6 hairpin", tcp("fd00:0:0:1::10", "fd00:30::10", 80), []string{"dnat [fd00:0:0:1::10]:8080 masquerade"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := pathStrings(Trace(m, []netip.Addr{nodeIP}, tc.pkt))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("trace %+v (-want +got):\n%s", tc.pkt, diff)
			}
		})
	}
}

func pathStrings(ps []Path) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func TestTraceAffinity(t *testing.T) {
	tr := &Tracer{Model: Build(traceState()), LocalAddrs: []netip.Addr{nodeIP}}
	client := tcp("10.0.3.50", "172.30.0.17", 80)
	first := tr.Trace(client)
	if diff := cmp.Diff([]string{"dnat 10.0.1.7:8080", "dnat 10.0.2.7:8080"}, pathStrings(first)); diff != "" {
		t.Fatalf("first packet (-want +got):\n%s", diff)
	}
	for _, p := range first {
		if len(p.Updates) != 1 || p.Updates[0].Addr != client.Src {
			t.Fatalf("path %v: updates %v, want one for %v", p, p.Updates, client.Src)
		}
	}
	tr.Commit(first[1]) // the kernel picked 10.0.2.7
	for range 3 {
		if diff := cmp.Diff([]string{"dnat 10.0.2.7:8080"}, pathStrings(tr.Trace(client))); diff != "" {
			t.Fatalf("sticky client (-want +got):\n%s", diff)
		}
	}
	other := tcp("10.0.3.51", "172.30.0.17", 80)
	if got := len(tr.Trace(other)); got != 2 {
		t.Errorf("another client has %d paths, want 2", got)
	}
	set, ok := tr.Model.SetByName(first[0].Updates[0].Set)
	if !ok || !set.Dynamic || set.Timeout != 3*time.Hour {
		t.Errorf("affinity set %+v (found %v), want dynamic with 3h timeout", set, ok)
	}
}

func TestTraceMasqueradeAll(t *testing.T) {
	st := traceState()
	st.MasqueradeAll = true
	got := pathStrings(Trace(Build(st), nil, tcp("10.0.1.50", "172.30.0.12", 80)))
	// ClusterIP traffic is masqueraded whichever the internal policy, as
	// kube-proxy marks it in the local chain too.
	if diff := cmp.Diff([]string{"dnat 10.0.1.3:8080 masquerade"}, got); diff != "" {
		t.Errorf("itp local (-want +got):\n%s", diff)
	}
	got = pathStrings(Trace(Build(st), nil, tcp("10.0.1.50", "172.30.0.16", 80)))
	if diff := cmp.Diff([]string{"dnat 10.0.1.6:8080 masquerade"}, got); diff != "" {
		t.Errorf("cluster policy (-want +got):\n%s", diff)
	}
}

func TestTraceNodePortAnyLocalAddress(t *testing.T) {
	st := traceState()
	st.Node.Addresses = nil // every local address, via fib
	m := Build(st)
	local := []netip.Addr{nodeIP, a("192.168.1.10")}
	for _, dst := range []string{"192.168.0.10", "192.168.1.10"} {
		got := pathStrings(Trace(m, local, tcp("203.0.113.5", dst, 30081)))
		if diff := cmp.Diff([]string{"dnat 10.0.1.2:8080"}, got); diff != "" {
			t.Errorf("nodeport on %s (-want +got):\n%s", dst, diff)
		}
	}
	if got := pathStrings(Trace(m, local, tcp("203.0.113.5", "127.0.0.1", 30081))); !cmp.Equal(got, []string{"accept"}) {
		t.Errorf("nodeport on loopback: %v, want untouched", got)
	}
}

// A dual-stack Service's NodePort answers on the node's addresses of both
// families, listed or found by fib, and each family reaches its own
// backends only.
func TestTraceNodePortDualStack(t *testing.T) {
	nodeIP6 := a("fd00:ff::10")
	for _, listed := range []bool{true, false} {
		st := traceState()
		st.Node.Addresses = nil
		if listed {
			st.Node.Addresses = []netip.Addr{nodeIP, nodeIP6}
		}
		for i, svc := range st.Services {
			if svc.Name == "dual" {
				st.Services[i].Ports = httpPort(30090)
			}
		}
		m := Build(st)
		local := []netip.Addr{nodeIP, nodeIP6}
		for _, tc := range []struct {
			pkt  Packet
			want []string
		}{
			{tcp("2001:db8::5", "fd00:ff::10", 30090), []string{"dnat [fd00:0:0:1::10]:8080 masquerade"}},
			{tcp("203.0.113.5", "192.168.0.10", 30090), []string{"dnat 10.0.1.10:8080 masquerade"}},
			{tcp("2001:db8::5", "fd00:ff::10", 30091), []string{"accept"}},
			{udp("2001:db8::5", "fd00:ff::10", 30090), []string{"accept"}},
		} {
			if diff := cmp.Diff(tc.want, pathStrings(Trace(m, local, tc.pkt))); diff != "" {
				t.Errorf("addresses listed %v, %+v (-want +got):\n%s", listed, tc.pkt, diff)
			}
		}
	}
}

// Topology hints narrow a Service's Ready endpoints as kube-proxy narrows them: node hints
// (trafficDistribution: PreferSameNode) when every endpoint has some and one names this node,
// else zone hints (PreferSameZone, PreferClose) when every endpoint has some and one names this
// node's zone, else none. web's endpoints are 10.0.1.1, 10.0.2.1 and 10.0.3.1.
func TestTraceTopologyHints(t *testing.T) {
	all := []string{"dnat 10.0.1.1:8080", "dnat 10.0.2.1:8080", "dnat 10.0.3.1:8080"}
	for _, tc := range []struct {
		name        string
		zone        string     // this node's
		zones       [][]string // hints.forZones of each endpoint
		nodes       [][]string // hints.forNodes of each endpoint
		terminating []bool     // endpoints Serving and Terminating, not Ready
		want        []string
	}{
		{name: "zone hints", zone: "z1", zones: [][]string{{"z1"}, {"z2"}, {"z1"}},
			want: []string{"dnat 10.0.1.1:8080", "dnat 10.0.3.1:8080"}},
		{name: "an endpoint without a zone hint", zone: "z1", zones: [][]string{{"z1"}, {"z2"}, nil}, want: all},
		{name: "no hint for this zone", zone: "z3", zones: [][]string{{"z1"}, {"z2"}, {"z1"}}, want: all},
		{name: "a node without a zone", zones: [][]string{{"z1"}, {"z2"}, {"z1"}}, want: all},
		{name: "node hints before zone hints", zone: "z1",
			zones: [][]string{{"z1"}, {"z1"}, {"z1"}}, nodes: [][]string{{nodeB}, {nodeA}, {"node-c"}},
			want: []string{"dnat 10.0.2.1:8080"}},
		{name: "node hints without a zone", nodes: [][]string{{nodeA}, {nodeA}, {"node-c"}},
			want: []string{"dnat 10.0.1.1:8080", "dnat 10.0.2.1:8080"}},
		{name: "no node hint for this node: zone hints", zone: "z2",
			zones: [][]string{{"z1"}, {"z2"}, {"z1"}}, nodes: [][]string{{nodeB}, {nodeB}, {"node-c"}},
			want: []string{"dnat 10.0.2.1:8080"}},
		{name: "an endpoint without a node hint: zone hints", zone: "z1",
			zones: [][]string{{"z1"}, {"z2"}, {"z1"}}, nodes: [][]string{{nodeA}, {nodeB}, nil},
			want: []string{"dnat 10.0.1.1:8080", "dnat 10.0.3.1:8080"}},
		{name: "terminating endpoints: hints ignored", zone: "z1", terminating: []bool{true, true, true},
			zones: [][]string{{"z1"}, {"z2"}, {"z2"}}, nodes: [][]string{{nodeB}, {nodeA}, {nodeB}}, want: all},
		{name: "a terminating endpoint without hints: Ready ones narrowed", zone: "z1", terminating: []bool{false, false, true},
			zones: [][]string{{"z1"}, {"z2"}, nil}, nodes: [][]string{{nodeA}, {nodeB}, nil},
			want: []string{"dnat 10.0.1.1:8080"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := traceState()
			st.Node.Zone = tc.zone
			eps := slices.Clone(st.Endpoints[ServiceKey{"ns", "web"}])
			for i := range eps {
				if tc.zones != nil {
					eps[i].ZoneHints = tc.zones[i]
				}
				if tc.nodes != nil {
					eps[i].NodeHints = tc.nodes[i]
				}
				if tc.terminating != nil && tc.terminating[i] {
					eps[i].Ready, eps[i].Serving, eps[i].Terminating = false, true, true
				}
			}
			st.Endpoints[ServiceKey{"ns", "web"}] = eps
			got := pathStrings(Trace(Build(st), nil, tcp("10.0.1.50", "172.30.0.10", 80)))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// proxy.nodePortAddresses that match no address of the node: NodePorts
// are served on none, not on all.
func TestTraceNodePortNoMatchingAddress(t *testing.T) {
	st := traceState()
	st.Node.Addresses = []netip.Addr{}
	m := Build(st)
	if got := pathStrings(Trace(m, []netip.Addr{nodeIP}, tcp("203.0.113.5", "192.168.0.10", 30081))); !cmp.Equal(got, []string{"accept"}) {
		t.Errorf("nodeport with no NodePort address: %v, want untouched", got)
	}
	if got := pathStrings(Trace(m, []netip.Addr{nodeIP}, tcp("10.0.1.50", "172.30.0.10", 80))); len(got) == 0 || got[0] == "accept" {
		t.Errorf("clusterip with no NodePort address: %v, want DNAT", got)
	}
}
