package routing

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

func TestAttachPodConnectivity(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)

	a := attach(t, l, "pod-a", "10.244.1.2/24", "fd00:10:244:1::2/64")
	// Checked before anything else runs: the address must be usable straight away.
	ah := nsHandle(t, a.ns)
	for _, ip := range a.net.IPs {
		if isTentative(addrFlags(t, ah, "eth0", ip)) {
			t.Errorf("%s is tentative right after AttachPod", ip)
		}
	}
	b := attach(t, l, "pod-b", "10.244.1.3/24", "fd00:10:244:1::3/64")

	if want := (net.HardwareAddr{0x0a, 0x58, 10, 244, 1, 2}); a.ifs.PodIf.MAC.String() != want.String() {
		t.Errorf("pod MAC %s, want %s", a.ifs.PodIf.MAC, want)
	}
	if a.ifs.HostVeth.Name != HostVethName("pod-a", "eth0") || a.ifs.PodIf.Name != "eth0" || len(a.ifs.HostVeth.MAC) != 6 {
		t.Errorf("interfaces %+v", a.ifs)
	}
	host, err := nd.nl.LinkByName(a.net.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	pi, err := nd.nl.LinkGetProtinfo(host)
	if err != nil {
		t.Fatal(err)
	}
	if !pi.Hairpin {
		t.Error("hairpin off on the host veth")
	}

	srvB := listen(t, b.ns, "[::]:0")
	for _, tc := range []struct {
		name     string
		from     *pod
		dst      string
		wantPeer string
	}{
		{"pod to pod ipv4", a, "10.244.1.3", "10.244.1.2"},
		{"pod to pod ipv6", a, "fd00:10:244:1::3", "fd00:10:244:1::2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mustPeerSeen(t, tc.from.ns, net.JoinHostPort(tc.dst, srvB.port()))
			if got != netip.MustParseAddr(tc.wantPeer) {
				t.Errorf("server saw %s, want the pod's own %s (no NAT)", got, tc.wantPeer)
			}
		})
	}

	// The node answers on its gateway addresses: pod to node is local delivery.
	srvNode := listen(t, nd.ns, "[::]:0")
	for _, gw := range []string{"10.244.1.1", "fd00:10:244:1::1"} {
		t.Run("pod to gateway "+gw, func(t *testing.T) {
			got := mustPeerSeen(t, b.ns, net.JoinHostPort(gw, srvNode.port()))
			if !got.IsValid() {
				t.Errorf("no answer from the node at %s", gw)
			}
		})
	}
}

func TestMasqueradeWithRealPackets(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	outside := uplink(t, nd, 1500)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)
	p := attach(t, l, "pod-out", "10.244.1.7/24")

	// 10.244.2.5 stands for a pod on another node, reached over the underlay.
	oh := nsHandle(t, outside)
	eth0, err := oh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := oh.AddrAdd(eth0, &netlink.Addr{IPNet: toIPNet(netip.MustParsePrefix("10.244.2.5/32"))}); err != nil {
		t.Fatal(err)
	}
	if err := oh.RouteAdd(&netlink.Route{
		LinkIndex: eth0.Attrs().Index, Dst: toIPNet(netip.MustParsePrefix("10.244.1.0/24")), Gw: net.ParseIP("198.18.0.2"),
	}); err != nil {
		t.Fatal(err)
	}
	up0, err := nd.nl.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nd.nl.RouteAdd(&netlink.Route{
		LinkIndex: up0.Attrs().Index, Dst: toIPNet(netip.MustParsePrefix("10.244.2.0/24")), Gw: net.ParseIP("198.18.0.100"),
	}); err != nil {
		t.Fatal(err)
	}

	srv := listen(t, outside, "0.0.0.0:0")
	if got := mustPeerSeen(t, p.ns, net.JoinHostPort("198.18.0.100", srv.port())); got != netip.MustParseAddr("198.18.0.2") {
		t.Errorf("outside saw %s, want the node's 198.18.0.2 (masquerade)", got)
	}
	if got := mustPeerSeen(t, p.ns, net.JoinHostPort("10.244.2.5", srv.port())); got != netip.MustParseAddr("10.244.1.7") {
		t.Errorf("other node's pod saw %s, want the pod's 10.244.1.7 (no NAT inside the cluster)", got)
	}
}

func TestAttachPodIsIdempotent(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)
	p := attach(t, l, "pod-retry", "10.244.1.9/24", "fd00:10:244:1::9/64")
	before, err := nd.nl.LinkByName(p.net.HostVeth)
	if err != nil {
		t.Fatal(err)
	}

	again, err := l.AttachPod(p.net)
	if err != nil {
		t.Fatalf("second AttachPod: %v", err)
	}
	if diff := cmp.Diff(p.ifs, again); diff != "" {
		t.Errorf("second AttachPod result (-first +second):\n%s", diff)
	}
	after, err := nd.nl.LinkByName(p.net.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if after.Attrs().Index != before.Attrs().Index {
		t.Error("second AttachPod recreated the veth instead of adopting it")
	}
	if err := l.CheckPod(p.net); err != nil {
		t.Errorf("CheckPod after retry: %v", err)
	}
}

func TestAttachPodReplacesStaleVeth(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)
	p := attach(t, l, "pod-stale", "10.244.1.10/24")

	// The same container retried with another address: the old pair must not be adopted.
	p.net.IPs = []netip.Prefix{netip.MustParsePrefix("10.244.1.11/24")}
	if _, err := l.AttachPod(p.net); err != nil {
		t.Fatalf("AttachPod: %v", err)
	}
	if err := l.CheckPod(p.net); err != nil {
		t.Errorf("CheckPod: %v", err)
	}
	ph := nsHandle(t, p.ns)
	addrFlags(t, ph, "eth0", netip.MustParsePrefix("10.244.1.11/24"))
}

func TestDetachPod(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)
	a := attach(t, l, "pod-a", "10.244.1.2/24")
	b := attach(t, l, "pod-b", "10.244.1.3/24")
	addPort(t, nd.nl, "other0", nil, "nodenet0") // not ours: no "nn" prefix

	veths, err := l.PodVeths()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{a.net.HostVeth, b.net.HostVeth}
	if want[0] > want[1] {
		want[0], want[1] = want[1], want[0]
	}
	if diff := cmp.Diff(want, veths); diff != "" {
		t.Errorf("PodVeths (-want +got):\n%s", diff)
	}

	if err := l.DetachPod(a.net.HostVeth); err != nil {
		t.Fatalf("DetachPod: %v", err)
	}
	if linkExists(t, nd.nl, a.net.HostVeth) {
		t.Error("host veth still there")
	}
	if linkExists(t, nsHandle(t, a.ns), "eth0") {
		t.Error("pod end still there")
	}
	if err := l.DetachPod(a.net.HostVeth); err != nil {
		t.Errorf("second DetachPod: %v", err)
	}
	if err := l.DetachPod("nodenet0"); err == nil {
		t.Error("DetachPod deleted a bridge")
	}
	veths, err = l.PodVeths()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{b.net.HostVeth}, veths); diff != "" {
		t.Errorf("PodVeths after detach (-want +got):\n%s", diff)
	}
}

func TestAttachPodFailureLeavesNothing(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)

	t.Run("netns does not exist", func(t *testing.T) {
		p := podNetwork("/run/netns/nodenet-test-does-not-exist", "gone", "10.244.1.20/24")
		attachFailsClean(t, nd, l, p, "")
	})

	t.Run("interface name taken in the pod", func(t *testing.T) {
		podNS := newNS(t)
		ph := nsHandle(t, podNS)
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "eth0"
		if err := ph.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0p", PeerTxQLen: -1}); err != nil {
			t.Fatal(err)
		}
		p := podNetwork(podNS.Path(), "taken", "10.244.1.21/24")
		attachFailsClean(t, nd, l, p, "")
	})

	t.Run("failure after the veth exists", func(t *testing.T) {
		podNS := newNS(t)
		p := podNetwork(podNS.Path(), "badgw", "10.244.1.22/24")
		// Not on the pod's subnet: the kernel refuses the default route, the last step.
		p.Gateways = []netip.Prefix{netip.MustParsePrefix("10.9.9.1/24")}
		attachFailsClean(t, nd, l, p, "default route")
		if linkExists(t, nsHandle(t, podNS), "eth0") {
			t.Error("pod end left behind")
		}
	})
}

// attachFailsClean asserts AttachPod fails (with an error containing want, if given) and leaves
// no host veth behind.
func attachFailsClean(t *testing.T, nd *node, l *Local, p PodNetwork, want string) {
	t.Helper()
	_, err := l.AttachPod(p)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("AttachPod: %v, want an error containing %q", err, want)
	}
	if linkExists(t, nd.nl, p.HostVeth) {
		t.Error("host veth left behind")
	}
}

func TestCheckPod(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)
	p := attach(t, l, "pod-check", "10.244.1.30/24", "fd00:10:244:1::30/64")
	if err := l.CheckPod(p.net); err != nil {
		t.Fatalf("CheckPod on a fresh pod: %v", err)
	}

	ph := nsHandle(t, p.ns)
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ph.RouteDel(&netlink.Route{
		LinkIndex: eth0.Attrs().Index, Dst: defaultDst(netip.IPv4Unspecified()), Gw: net.ParseIP("10.244.1.1"),
	}); err != nil {
		t.Fatal(err)
	}
	err = l.CheckPod(p.net)
	if err == nil || !strings.Contains(err.Error(), "default route via 10.244.1.1 missing") {
		t.Errorf("CheckPod without the IPv4 default route: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "fd00") {
		t.Errorf("CheckPod blames the IPv6 route too: %v", err)
	}

	if err := ph.AddrDel(eth0, &netlink.Addr{IPNet: toIPNet(netip.MustParsePrefix("fd00:10:244:1::30/64"))}); err != nil {
		t.Fatal(err)
	}
	if err := l.CheckPod(p.net); err == nil || !strings.Contains(err.Error(), "address fd00:10:244:1::30/64 missing") {
		t.Errorf("CheckPod without the IPv6 address: %v", err)
	}

	if err := l.DetachPod(p.net.HostVeth); err != nil {
		t.Fatal(err)
	}
	if err := l.CheckPod(p.net); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("CheckPod after DetachPod: %v", err)
	}
}

// TestFirstPacketsAfterAttach talks from a new pod at once, as a container that starts right
// after ADD does. A link the kernel has not activated yet drops what it sends; if that is the
// ARP exchange, the pod's SYN waits in the neighbour queue until TCP's retransmission timeout
// (a second). The pod's TCP timeout counter shows that without timing anything.
func TestFirstPacketsAfterAttach(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	nd.ensure(t, l)
	srv := listen(t, nd.ns, "0.0.0.0:0")

	p := attach(t, l, "pod-first", "10.244.1.40/24")
	mustPeerSeen(t, p.ns, net.JoinHostPort("10.244.1.1", srv.port()))
	if n := netstat(t, p.ns, "TcpExt", "TCPTimeouts"); n != 0 {
		t.Errorf("pod's first connection hit %d retransmission timeouts: its first packets were dropped", n)
	}
}

// netstat reads one counter of /proc/net/netstat in n.
func netstat(t *testing.T, n ns.NetNS, group, name string) int {
	t.Helper()
	var data []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		// thread-self: /proc/net follows the thread group leader, not the switched thread.
		data, err = os.ReadFile("/proc/thread-self/net/netstat")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Each group is a line of names and a line of values, both led by "Group:".
	lines := strings.Split(string(data), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != group+":" || len(values) != len(names) {
			continue
		}
		for j, nm := range names {
			if nm == name {
				v, err := strconv.Atoi(values[j])
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatalf("no %s %s in /proc/net/netstat", group, name)
	return 0
}
