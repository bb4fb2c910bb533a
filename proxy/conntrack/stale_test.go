package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ti-mo/conntrack"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	dns = proxy.ServiceKey{Namespace: "kube-system", Name: "dns"}
	sig = proxy.ServiceKey{Namespace: "ns", Name: "sig"}
	off = proxy.ServiceKey{Namespace: "ns", Name: "off"}
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// testState is a dual-stack UDP+TCP Service with a NodePort and external
// and load-balancer IPs, an SCTP Service, and a UDP Service without
// serving endpoints.
func testState() proxy.State {
	return proxy.State{
		Services: []proxy.Service{
			{
				Namespace: "kube-system", Name: "dns",
				ClusterIPs:      addrs("10.96.0.10", "fd00:96::10"),
				ExternalIPs:     addrs("192.0.2.10"),
				LoadBalancerIPs: addrs("::ffff:198.51.100.10"), // mapped: compared unmapped
				Ports: []proxy.ServicePort{
					{Name: "dns", Protocol: proxy.UDP, Port: 53, NodePort: 30053},
					{Name: "dns-tcp", Protocol: proxy.TCP, Port: 53, NodePort: 30054},
				},
			},
			{
				Namespace: "ns", Name: "sig", ClusterIPs: addrs("10.96.0.20"),
				Ports: []proxy.ServicePort{{Name: "sig", Protocol: proxy.SCTP, Port: 3868}},
			},
			{
				Namespace: "ns", Name: "off", ClusterIPs: addrs("10.96.0.30"),
				Ports: []proxy.ServicePort{{Name: "off", Protocol: proxy.UDP, Port: 53, NodePort: 30055}},
			},
		},
		Endpoints: map[proxy.ServiceKey][]proxy.Endpoint{
			dns: {
				{Addr: netip.MustParseAddr("10.244.1.5"), Ports: map[string]int32{"dns": 8053, "dns-tcp": 8053}, Ready: true, Serving: true},
				// Terminating but serving: keeps its entries.
				{Addr: netip.MustParseAddr("10.244.2.5"), Ports: map[string]int32{"dns": 8053}, Serving: true, Terminating: true},
				// Not serving: its entries go.
				{Addr: netip.MustParseAddr("10.244.3.5"), Ports: map[string]int32{"dns": 8053}},
				// Ready only, as a hand-made State may say it.
				{Addr: netip.MustParseAddr("fd00:244:1::5"), Ports: map[string]int32{"dns": 8053}, Ready: true},
			},
			sig: {{Addr: netip.MustParseAddr("10.244.1.7"), Ports: map[string]int32{"sig": 3868}, Ready: true, Serving: true}},
			off: {{Addr: netip.MustParseAddr("10.244.1.8"), Ports: map[string]int32{"off": 53}, Terminating: true}},
		},
	}
}

func (w wanted) String() string {
	var lines []string
	for f, eps := range w {
		var ss []string
		for ap := range eps {
			ss = append(ss, ap.String())
		}
		slices.Sort(ss)
		proto := map[uint8]string{unix.IPPROTO_UDP: "udp", unix.IPPROTO_SCTP: "sctp"}[f.proto]
		lines = append(lines, fmt.Sprintf("%s %s ← %s", proto, netip.AddrPortFrom(f.addr, f.port), strings.Join(ss, " ")))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func TestWantedOf(t *testing.T) {
	want := strings.TrimSpace(`
sctp 10.96.0.20:3868 ← 10.244.1.7:3868
udp 0.0.0.0:30053 ← 10.244.1.5:8053 10.244.2.5:8053
udp 10.96.0.10:53 ← 10.244.1.5:8053 10.244.2.5:8053
udp 192.0.2.10:53 ← 10.244.1.5:8053 10.244.2.5:8053
udp 198.51.100.10:53 ← 10.244.1.5:8053 10.244.2.5:8053
udp [::]:30053 ← [fd00:244:1::5]:8053
udp [fd00:96::10]:53 ← [fd00:244:1::5]:8053`)
	if diff := cmp.Diff(want, wantedOf(testState()).String()); diff != "" {
		t.Errorf("wantedOf (-want +got):\n%s", diff)
	}
}

func TestWantedOfSharedFrontend(t *testing.T) {
	st := proxy.State{
		Services: []proxy.Service{
			{Namespace: "ns", Name: "a", ExternalIPs: addrs("192.0.2.1"), Ports: []proxy.ServicePort{{Name: "p", Protocol: proxy.UDP, Port: 53}}},
			{Namespace: "ns", Name: "b", ExternalIPs: addrs("192.0.2.1"), Ports: []proxy.ServicePort{{Name: "p", Protocol: proxy.UDP, Port: 53}}},
		},
		Endpoints: map[proxy.ServiceKey][]proxy.Endpoint{
			{Namespace: "ns", Name: "a"}: {{Addr: netip.MustParseAddr("10.244.1.1"), Ports: map[string]int32{"p": 53}, Serving: true}},
			{Namespace: "ns", Name: "b"}: {{Addr: netip.MustParseAddr("10.244.1.2"), Ports: map[string]int32{"p": 53}, Serving: true}},
		},
	}
	if diff := cmp.Diff("udp 192.0.2.1:53 ← 10.244.1.1:53 10.244.1.2:53", wantedOf(st).String()); diff != "" {
		t.Errorf("wantedOf (-want +got):\n%s", diff)
	}
}

// flow parses "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.1.5:8053": the
// original tuple, then the reply's source; the reply goes to the client.
func flow(t *testing.T, s string) conntrack.Flow {
	t.Helper()
	var proto, src, dst, reply string
	if _, err := fmt.Sscanf(s, "%s %s > %s < %s", &proto, &src, &dst, &reply); err != nil {
		t.Fatalf("flow %q: %v", s, err)
	}
	num := map[string]uint8{"udp": unix.IPPROTO_UDP, "tcp": unix.IPPROTO_TCP, "sctp": unix.IPPROTO_SCTP}[proto]
	o, d, r := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(reply)
	var f conntrack.Flow
	f.TupleOrig.IP = conntrack.IPTuple{SourceAddress: o.Addr(), DestinationAddress: d.Addr()}
	f.TupleOrig.Proto = conntrack.ProtoTuple{Protocol: num, SourcePort: o.Port(), DestinationPort: d.Port()}
	f.TupleReply.IP = conntrack.IPTuple{SourceAddress: r.Addr(), DestinationAddress: o.Addr()}
	f.TupleReply.Proto = conntrack.ProtoTuple{Protocol: num, SourcePort: r.Port(), DestinationPort: o.Port()}
	return f
}

func TestStale(t *testing.T) {
	w := wantedOf(testState())
	for _, tc := range []struct {
		name, flow string
		want       bool
	}{
		{"serving endpoint", "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.1.5:8053", false},
		{"terminating serving endpoint", "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.2.5:8053", false},
		{"endpoint not serving", "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.3.5:8053", true},
		{"removed endpoint", "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.9.9:8053", true},
		{"old target port", "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.1.5:53", true},
		{"not NATed, created before the rules", "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.96.0.10:53", true},
		{"external IP", "udp 203.0.113.1:40000 > 192.0.2.10:53 < 10.244.9.9:8053", true},
		{"load-balancer IP", "udp 203.0.113.1:40000 > 198.51.100.10:53 < 10.244.9.9:8053", true},
		{"load-balancer IP, serving", "udp 203.0.113.1:40000 > 198.51.100.10:53 < 10.244.1.5:8053", false},
		{"other port of the Service IP", "udp 10.0.0.2:40000 > 10.96.0.10:54 < 10.244.9.9:8053", false},
		{"TCP never", "tcp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.9.9:8053", false},
		{"TCP node port never", "tcp 203.0.113.1:40000 > 198.18.0.1:30054 < 10.244.9.9:8053", false},
		{"node port, any address", "udp 203.0.113.1:40000 > 198.18.0.1:30053 < 10.244.9.9:8053", true},
		{"node port, serving", "udp 203.0.113.1:40000 > 198.18.0.1:30053 < 10.244.1.5:8053", false},
		{"node port, IPv6", "udp [2001:db8::1]:40000 > [2001:db8::a]:30053 < [fd00:244:9::9]:8053", true},
		{"node port, IPv6, serving", "udp [2001:db8::1]:40000 > [2001:db8::a]:30053 < [fd00:244:1::5]:8053", false},
		{"IPv6 cluster IP", "udp [fd00::2]:40000 > [fd00:96::10]:53 < [fd00:244:9::9]:8053", true},
		{"IPv6 cluster IP, serving", "udp [fd00::2]:40000 > [fd00:96::10]:53 < [fd00:244:1::5]:8053", false},
		{"SCTP", "sctp 10.0.0.2:40000 > 10.96.0.20:3868 < 10.244.9.9:3868", true},
		{"SCTP, serving", "sctp 10.0.0.2:40000 > 10.96.0.20:3868 < 10.244.1.7:3868", false},
		{"UDP to an SCTP frontend", "udp 10.0.0.2:40000 > 10.96.0.20:3868 < 10.244.9.9:3868", false},
		{"Service without serving endpoints keeps its entries", "udp 10.0.0.2:40000 > 10.96.0.30:53 < 10.244.1.8:53", false},
		{"its node port too", "udp 10.0.0.2:40000 > 198.18.0.1:30055 < 10.244.1.8:53", false},
		{"no Service", "udp 10.0.0.2:40000 > 1.1.1.1:53 < 1.1.1.1:53", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := w.stale(flow(t, tc.flow)); got != tc.want {
				t.Errorf("stale(%s) = %v, want %v", tc.flow, got, tc.want)
			}
		})
	}
}
