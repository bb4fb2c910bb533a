package routing

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// The overlay in real namespaces, checked with real packets. The test cluster:
//
//	n1 198.18.0.1 ─┐
//	               ├─ br0 (underlay) ─ 198.18.0.254 router 198.18.1.254 ─ 198.18.1.3 n3
//	n2 198.18.0.2 ─┘
//
// n1 and n2 share an L2 segment, n3 is on another one behind a router: in auto mode n1 and n2
// route to each other directly and reach n3 over VXLAN. Node N has pods 10.244.N.0/24 (and
// fd00:10:244:N::/64) on its bridge and one pod at .2 (::2).

type clusterNode struct {
	*node
	num     int
	addr    netip.Addr
	vtep    VTEP
	overlay *Overlay
	pod     *pod
}

func (cn *clusterNode) name() string { return fmt.Sprintf("n%d", cn.num) }

func (cn *clusterNode) podCIDRs(dual bool) []netip.Prefix {
	p := []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", cn.num))}
	if dual {
		p = append(p, netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", cn.num)))
	}
	return p
}

func (cn *clusterNode) podIP(v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::2", cn.num))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", cn.num))
}

type cluster struct {
	dual  bool
	nodes []*clusterNode
}

// addVeth creates a veth pair, name in h's namespace and peerName in peerNS, gives each end its
// address (unless "") and waits until both are up. The peer's loopback comes up as well.
func addVeth(t *testing.T, h *netlink.Handle, name, addr string, peerNS ns.NetNS, peerName, peerAddr string) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.Flags = net.FlagUp
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: peerName, PeerNamespace: netlink.NsFd(int(peerNS.Fd())), PeerTxQLen: -1}
	if err := h.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	if addr != "" {
		if err := h.AddrAdd(v, &netlink.Addr{IPNet: toIPNet(netip.MustParsePrefix(addr))}); err != nil {
			t.Fatal(err)
		}
	}
	ph := nsHandle(t, peerNS)
	peer, err := ph.LinkByName(peerName)
	if err != nil {
		t.Fatal(err)
	}
	if peerAddr != "" {
		if err := ph.AddrAdd(peer, &netlink.Addr{IPNet: toIPNet(netip.MustParsePrefix(peerAddr))}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{peerName, "lo"} {
		link, err := ph.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := ph.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	_, down, err := waitOperUp([]linkRef{{h: h, index: v.Index, name: name}, {h: ph, index: peer.Attrs().Index, name: peerName}})
	if err != nil || len(down) > 0 {
		t.Fatalf("veth %s not up: %v %v", name, down, err)
	}
}

func defaultVia(t *testing.T, h *netlink.Handle, gw string) {
	t.Helper()
	if err := h.RouteAdd(&netlink.Route{Dst: defaultDst(netip.MustParseAddr(gw)), Gw: net.ParseIP(gw)}); err != nil {
		t.Fatalf("default route via %s: %v", gw, err)
	}
}

// newCluster builds the underlay and the three nodes, each with its bridge, one pod and its
// overlay synced with the other two as peers.
func newCluster(t *testing.T, mode string, dual bool) *cluster {
	t.Helper()
	return newClusterWith(t, mode, dual, (*cluster).peersOf)
}

// newClusterWith is newCluster with the first Sync of each node given peersOf(cn) as peers.
func newClusterWith(t *testing.T, mode string, dual bool, peersOf func(*cluster, *clusterNode) []Peer) *cluster {
	t.Helper()
	requireRoot(t)
	c := &cluster{dual: dual}
	underlay, router := newNode(t), newNode(t)
	brAttrs := netlink.NewLinkAttrs()
	brAttrs.Name = "br0"
	brAttrs.Flags = net.FlagUp
	if err := underlay.nl.LinkAdd(&netlink.Bridge{LinkAttrs: brAttrs}); err != nil {
		t.Fatal(err)
	}
	br, err := underlay.nl.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	port := func(name string) {
		link, err := underlay.nl.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := underlay.nl.LinkSetMaster(link, br); err != nil {
			t.Fatal(err)
		}
	}
	addVeth(t, underlay.nl, "to-router", "", router.ns, "eth0", "198.18.0.254/24")
	port("to-router")
	if err := router.ns.Do(func(ns.NetNS) error { return ensureSysctl("net/ipv4/ip_forward", "1") }); err != nil {
		t.Fatal(err)
	}

	for num := 1; num <= 3; num++ {
		cn := &clusterNode{node: newNode(t), num: num}
		if num < 3 {
			cn.addr = netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", num))
			addVeth(t, underlay.nl, cn.name(), "", cn.ns, "eth0", cn.addr.String()+"/24")
			port(cn.name())
			defaultVia(t, cn.nl, "198.18.0.254")
		} else {
			cn.addr = netip.MustParseAddr("198.18.1.3")
			addVeth(t, router.nl, "eth1", "198.18.1.254/24", cn.ns, "eth0", cn.addr.String()+"/24")
			defaultVia(t, cn.nl, "198.18.1.254")
		}
		c.nodes = append(c.nodes, cn)
	}
	_, down, err := waitOperUp([]linkRef{{h: underlay.nl, index: br.Attrs().Index, name: "br0"}})
	if err != nil || len(down) > 0 {
		t.Fatalf("underlay bridge not up: %v %v", down, err)
	}

	for _, cn := range c.nodes {
		cn.overlay = c.newOverlay(t, cn, mode)
		var err error
		if cn.vtep, err = cn.overlay.Ensure(); err != nil {
			t.Fatalf("%s: Ensure: %v", cn.name(), err)
		}
		cfg := LocalConfig{
			Bridge:       "nodenet0",
			MTU:          cn.vtep.MTU,
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
			PodCIDRs:     cn.podCIDRs(dual),
		}
		for _, p := range cfg.PodCIDRs {
			cfg.Gateways = append(cfg.Gateways, netip.PrefixFrom(p.Addr().Next(), p.Bits()))
		}
		l := cn.local(t, cfg)
		cn.ensure(t, l)

		podNS := newNS(t)
		pn := PodNetwork{NetnsPath: podNS.Path(), IfName: "eth0", HostVeth: HostVethName(cn.name()+"-pod", "eth0"), MTU: cn.vtep.MTU}
		for i, p := range cfg.PodCIDRs {
			pn.IPs = append(pn.IPs, netip.PrefixFrom(cn.podIP(p.Addr().Is6()), p.Bits()))
			pn.Gateways = append(pn.Gateways, cfg.Gateways[i])
		}
		ifs, err := l.AttachPod(pn)
		if err != nil {
			t.Fatalf("%s: AttachPod: %v", cn.name(), err)
		}
		cn.pod = &pod{ns: podNS, net: pn, ifs: ifs}
	}
	for _, cn := range c.nodes {
		if _, err := cn.overlay.Sync(peersOf(c, cn)); err != nil {
			t.Fatalf("%s: Sync: %v", cn.name(), err)
		}
	}
	return c
}

func (c *cluster) newOverlay(t *testing.T, cn *clusterNode, mode string) *Overlay {
	t.Helper()
	o, err := NewOverlay(OverlayConfig{Mode: mode, LocalAddress: cn.addr, PodCIDRs: cn.podCIDRs(c.dual)}, cn.nl, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("NewOverlay: %v", err)
	}
	return o
}

// peersOf is the other nodes as the API server would describe them to cn.
func (c *cluster) peersOf(cn *clusterNode) []Peer {
	var peers []Peer
	for _, o := range c.nodes {
		if o != cn {
			peers = append(peers, Peer{Name: o.name(), Address: o.addr, PodCIDRs: o.podCIDRs(c.dual), VTEPMAC: o.vtep.MAC})
		}
	}
	return peers
}

func (c *cluster) node(num int) *clusterNode { return c.nodes[num-1] }

// run runs a command inside n and returns its combined output.
func run(n ns.NetNS, name string, args ...string) (string, error) {
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	return string(out), err
}

// ping sends one echo request of the given payload size with DF set, which fails rather than
// fragments where the path is too narrow.
func ping(t *testing.T, from ns.NetNS, dst netip.Addr, size int) error {
	t.Helper()
	bin := requireTool(t, "ping")
	out, err := run(from, bin, "-n", "-c", "1", "-W", "3", "-M", "do", "-s", fmt.Sprint(size), dst.String())
	if err != nil {
		return fmt.Errorf("ping -M do -s %d %s: %w\n%s", size, dst, err, out)
	}
	return nil
}

// vxlanTxPackets is how many packets the node's VXLAN device has sent, 0 without one.
func vxlanTxPackets(t *testing.T, cn *clusterNode) uint64 {
	t.Helper()
	link, err := cn.nl.LinkByName(VXLANDevice)
	if isNotFound(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().Statistics.TxPackets
}

// checkPath sends TCP and ICMP from the pod of one node to the pod of another and checks that
// they arrive, without NAT, through the expected path (told by the VXLAN device's counter).
// The ICMP packet fills the pod MTU exactly, with DF set.
func checkPath(t *testing.T, from, to *clusterNode, v6, wantVXLAN bool) {
	t.Helper()
	src, dst := from.pod.net.IPs[0].Addr(), to.podIP(v6)
	if v6 {
		src = from.pod.net.IPs[1].Addr()
	}
	srv := listen(t, to.pod.ns, "[::]:0")
	before := vxlanTxPackets(t, from)
	if got := mustPeerSeen(t, from.pod.ns, net.JoinHostPort(dst.String(), srv.port())); got != src {
		t.Errorf("%s pod → %s pod: server saw %s, want the client pod's own %s (no NAT)", from.name(), to.name(), got, src)
	}
	header := 20 + 8
	if v6 {
		header = 40 + 8
	}
	for _, size := range []int{56, 1400, from.vtep.MTU - header} {
		if err := ping(t, from.pod.ns, dst, size); err != nil {
			t.Errorf("%s pod → %s pod: %v", from.name(), to.name(), err)
		}
	}
	if sent := vxlanTxPackets(t, from) - before; (sent > 0) != wantVXLAN {
		t.Errorf("%s pod → %s pod: %d packets through %s, want VXLAN path %v", from.name(), to.name(), sent, VXLANDevice, wantVXLAN)
	}
}

// overlayListing is the overlay's kernel state in cn as iproute2 prints it, each part sorted:
// nodenet's routes, the permanent neighbours and the FDB of the VXLAN device. It is a view
// independent of the netlink reads the overlay itself makes.
func overlayListing(t *testing.T, cn *clusterNode) string {
	t.Helper()
	ip, bridge := requireTool(t, "ip"), requireTool(t, "bridge")
	proto := fmt.Sprint(int(RouteProtocol))
	cmds := [][]string{
		{ip, "-4", "route", "show", "proto", proto},
		{ip, "-6", "route", "show", "proto", proto},
	}
	if link, err := cn.nl.LinkByName(VXLANDevice); err == nil && link.Type() == "vxlan" {
		cmds = append(cmds,
			[]string{ip, "neigh", "show", "dev", VXLANDevice, "nud", "permanent"},
			[]string{bridge, "fdb", "show", "dev", VXLANDevice})
	}
	var lines []string
	for _, cmd := range cmds {
		out := inNS(t, cn.ns, cmd[0], cmd[1:]...)
		var part []string
		for _, l := range strings.Split(out, "\n") {
			if l = strings.Join(strings.Fields(l), " "); l != "" {
				part = append(part, l)
			}
		}
		slices.Sort(part)
		lines = append(lines, part...)
	}
	return strings.Join(lines, "\n")
}

func checkListing(t *testing.T, cn *clusterNode, want string) {
	t.Helper()
	if diff := cmp.Diff(strings.TrimSpace(want), overlayListing(t, cn)); diff != "" {
		t.Errorf("%s overlay state (-want +got):\n%s", cn.name(), diff)
	}
}

// kernelChanges lists the netlink notifications of changes in n while f runs that the
// overlay could have caused: links, addresses, routes and permanent neighbour and FDB entries.
// What the kernel does by itself is left out: its own routes (proto kernel), IPv6 link-local
// addresses and per-family link info from address autoconfiguration, and neighbour entries it
// resolves and expires. A sentinel route added and deleted after f marks the end, so nothing
// waits on a timer.
func kernelChanges(t *testing.T, n ns.NetNS, f func()) []string {
	t.Helper()
	s, err := nl.SubscribeAt(netns.NsHandle(n.Fd()), netns.None(), unix.NETLINK_ROUTE,
		unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR,
		unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer s.Close()
	if err := s.SetReceiveTimeout(&unix.Timeval{Sec: 5}); err != nil {
		t.Fatal(err)
	}

	f()

	const sentinelTable = 99
	h := nsHandle(t, n)
	sentinel := &netlink.Route{Dst: toIPNet(netip.MustParsePrefix("198.18.255.255/32")), Table: sentinelTable, Type: unix.RTN_BLACKHOLE}
	if err := h.RouteAdd(sentinel); err != nil {
		t.Fatalf("sentinel route: %v", err)
	}
	if err := h.RouteDel(sentinel); err != nil {
		t.Fatalf("sentinel route: %v", err)
	}
	var changes []string
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			t.Fatalf("receive notifications: %v (so far %v)", err, changes)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
				rtm := nl.DeserializeRtMsg(m.Data)
				if rtm.Table == sentinelTable && m.Header.Type == unix.RTM_DELROUTE {
					return changes
				}
				if rtm.Table == sentinelTable || rtm.Protocol == unix.RTPROT_KERNEL {
					continue
				}
				changes = append(changes, fmt.Sprintf("route msg %d proto %d", m.Header.Type, rtm.Protocol))
			case unix.RTM_NEWLINK, unix.RTM_DELLINK:
				if m.Data[0] == unix.AF_INET6 {
					continue
				}
				changes = append(changes, fmt.Sprintf("link msg %d", m.Header.Type))
			case unix.RTM_NEWADDR, unix.RTM_DELADDR:
				attrs, err := nl.ParseRouteAttr(m.Data[unix.SizeofIfAddrmsg:])
				if err != nil {
					t.Fatal(err)
				}
				var a netip.Addr
				for _, at := range attrs {
					if at.Attr.Type == unix.IFA_ADDRESS {
						a, _ = netip.AddrFromSlice(at.Value)
					}
				}
				if !a.IsLinkLocalUnicast() {
					changes = append(changes, fmt.Sprintf("address msg %d %s", m.Header.Type, a))
				}
			case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
				ne, err := netlink.NeighDeserialize(m.Data)
				if err != nil {
					t.Fatal(err)
				}
				if ne.State&netlink.NUD_PERMANENT != 0 {
					changes = append(changes, fmt.Sprintf("neigh msg %d %s %s", m.Header.Type, ne.IP, ne.HardwareAddr))
				}
			}
		}
	}
}

// syncNoChanges runs Sync and checks that it changes nothing, by its own count and the kernel's.
func syncNoChanges(t *testing.T, cn *clusterNode, o *Overlay, peers []Peer) SyncResult {
	t.Helper()
	var res SyncResult
	var err error
	if events := kernelChanges(t, cn.ns, func() { res, err = o.Sync(peers) }); len(events) > 0 {
		t.Errorf("%s: unchanged Sync changed the kernel: %v", cn.name(), events)
	}
	if err != nil {
		t.Errorf("%s: Sync: %v", cn.name(), err)
	}
	if res.Changes != 0 {
		t.Errorf("%s: unchanged Sync reports %d changes", cn.name(), res.Changes)
	}
	return res
}

func TestOverlayAuto(t *testing.T) {
	c := newCluster(t, ModeAuto, true)
	n1, n2, n3 := c.node(1), c.node(2), c.node(3)

	for _, cn := range c.nodes {
		if want := (VTEP{MAC: vtepMAC(cn.addr), MTU: 1500 - 50}); cn.vtep.MAC.String() != want.MAC.String() || cn.vtep.MTU != want.MTU {
			t.Errorf("%s: Ensure returned %v %d, want %v %d", cn.name(), cn.vtep.MAC, cn.vtep.MTU, want.MAC, want.MTU)
		}
	}
	// The IPv6 pod ranges go over VXLAN even between n1 and n2: the underlay is IPv4 only.
	for _, tc := range []struct {
		cn   *clusterNode
		want SyncResult
	}{
		{n1, SyncResult{Direct: []string{"n2"}, VXLAN: []string{"n2", "n3"}}},
		{n3, SyncResult{VXLAN: []string{"n1", "n2"}}},
	} {
		res := syncNoChanges(t, tc.cn, tc.cn.overlay, c.peersOf(tc.cn))
		if diff := cmp.Diff(tc.want, res); diff != "" {
			t.Errorf("%s: Sync result (-want +got):\n%s", tc.cn.name(), diff)
		}
	}
	checkListing(t, n1, `
10.244.2.0/24 via 198.18.0.2 dev eth0
10.244.3.0/24 via 10.244.3.0 dev nodenet-vxlan onlink
fd00:10:244:2::/64 via fd00:10:244:2:: dev nodenet-vxlan metric 1024 onlink pref medium
fd00:10:244:3::/64 via fd00:10:244:3:: dev nodenet-vxlan metric 1024 onlink pref medium
10.244.3.0 lladdr 0e:4e:c6:12:01:03 PERMANENT
fd00:10:244:2:: lladdr 0e:4e:c6:12:00:02 PERMANENT
fd00:10:244:3:: lladdr 0e:4e:c6:12:01:03 PERMANENT
0e:4e:c6:12:00:02 dst 198.18.0.2 self permanent
0e:4e:c6:12:01:03 dst 198.18.1.3 self permanent`)

	for _, tc := range []struct {
		name     string
		from, to *clusterNode
		v6       bool
		vxlan    bool
	}{
		{"n1 to n2 ipv4 direct", n1, n2, false, false},
		{"n2 to n1 ipv4 direct", n2, n1, false, false},
		{"n1 to n3 ipv4 vxlan", n1, n3, false, true},
		{"n3 to n1 ipv4 vxlan", n3, n1, false, true},
		{"n2 to n3 ipv4 vxlan", n2, n3, false, true},
		{"n1 to n2 ipv6 vxlan", n1, n2, true, true},
		{"n1 to n3 ipv6 vxlan", n1, n3, true, true},
		{"n3 to n2 ipv6 vxlan", n3, n2, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) { checkPath(t, tc.from, tc.to, tc.v6, tc.vxlan) })
	}

	t.Run("node to remote pod uses the vtep address", func(t *testing.T) {
		srv := listen(t, n3.pod.ns, "[::]:0")
		got := mustPeerSeen(t, n1.ns, net.JoinHostPort("10.244.3.2", srv.port()))
		if want := netip.MustParseAddr("10.244.1.0"); got != want {
			t.Errorf("n3's pod saw n1 as %s, want its VTEP address %s", got, want)
		}
	})
}

func TestOverlayReconciles(t *testing.T) {
	c := newCluster(t, ModeAuto, true)
	n1, n3 := c.node(1), c.node(3)
	peers := c.peersOf(n1)

	t.Run("restart adopts", func(t *testing.T) {
		before, err := n1.nl.LinkByName(VXLANDevice)
		if err != nil {
			t.Fatal(err)
		}
		restarted := c.newOverlay(t, n1, ModeAuto)
		var vtep VTEP
		if events := kernelChanges(t, n1.ns, func() { vtep, err = restarted.Ensure() }); len(events) > 0 {
			t.Errorf("Ensure after restart changed the kernel: %v", events)
		}
		if err != nil {
			t.Fatal(err)
		}
		if vtep.MAC.String() != n1.vtep.MAC.String() || vtep.MTU != n1.vtep.MTU {
			t.Errorf("after restart VTEP %v %d, want %v %d", vtep.MAC, vtep.MTU, n1.vtep.MAC, n1.vtep.MTU)
		}
		syncNoChanges(t, n1, restarted, peers)
		after, err := n1.nl.LinkByName(VXLANDevice)
		if err != nil {
			t.Fatal(err)
		}
		if after.Attrs().Index != before.Attrs().Index {
			t.Error("the VXLAN device was recreated")
		}
	})

	t.Run("restores what others deleted", func(t *testing.T) {
		inNS(t, n1.ns, requireTool(t, "ip"), "route", "del", "10.244.3.0/24")
		inNS(t, n1.ns, requireTool(t, "bridge"), "fdb", "del", n3.vtep.MAC.String(), "dev", VXLANDevice, "dst", "198.18.1.3")
		var res SyncResult
		var err error
		// This also shows that kernelChanges sees changes when there are some.
		events := kernelChanges(t, n1.ns, func() { res, err = n1.overlay.Sync(peers) })
		if err != nil {
			t.Fatal(err)
		}
		if res.Changes != 2 || len(events) != 2 {
			t.Errorf("Sync made %d changes, the kernel saw %v; want 2, the route and the FDB entry", res.Changes, events)
		}
		checkPath(t, n1, n3, false, true)
		syncNoChanges(t, n1, n1.overlay, peers)
	})

	t.Run("direct peers stay routed without a device", func(t *testing.T) {
		link, err := n1.nl.LinkByName(VXLANDevice)
		if err != nil {
			t.Fatal(err)
		}
		if err := n1.nl.LinkDel(link); err != nil {
			t.Fatal(err)
		}
		// Someone else's link in the device's place.
		attrs := netlink.NewLinkAttrs()
		attrs.Name = VXLANDevice
		if err := n1.nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "squatter", PeerTxQLen: -1}); err != nil {
			t.Fatal(err)
		}
		res, err := n1.overlay.Sync(peers)
		if err == nil || !strings.Contains(err.Error(), "link nodenet-vxlan is a veth, not a vxlan") {
			t.Errorf("Sync error %v, want the foreign link named", err)
		}
		// n2's IPv6 range and n3 need the device; n2's IPv4 range is direct and stays.
		if !slices.Equal(res.Rejected, []string{"n2", "n3"}) {
			t.Errorf("Sync result %+v, want n2 and n3 rejected", res)
		}
		checkListing(t, n1, `10.244.2.0/24 via 198.18.0.2 dev eth0`)
		checkPath(t, n1, c.node(2), false, false)
	})

	t.Run("restores a removed device", func(t *testing.T) {
		link, err := n1.nl.LinkByName(VXLANDevice)
		if err != nil {
			t.Fatal(err)
		}
		if err := n1.nl.LinkDel(link); err != nil {
			t.Fatal(err)
		}
		if _, err := n1.overlay.Sync(peers); err != nil {
			t.Fatal(err)
		}
		checkPath(t, n1, n3, false, true)
		checkPath(t, n1, n3, true, true)
	})

	t.Run("rejects a peer that overlaps, syncs the others", func(t *testing.T) {
		bogus := Peer{Name: "n9", Address: netip.MustParseAddr("198.18.0.9"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/25")}}
		var res SyncResult
		var err error
		if events := kernelChanges(t, n1.ns, func() { res, err = n1.overlay.Sync(append(slices.Clone(peers), bogus)) }); len(events) > 0 {
			t.Errorf("Sync changed the kernel: %v", events)
		}
		want := "peer n9: pod CIDR 10.244.1.0/25 overlaps this node's 10.244.1.0/24"
		if err == nil || err.Error() != want {
			t.Errorf("Sync error %v, want %q", err, want)
		}
		if !slices.Equal(res.Rejected, []string{"n9"}) || !slices.Equal(res.VXLAN, []string{"n2", "n3"}) {
			t.Errorf("Sync result %+v, want n9 rejected and n2, n3 synced", res)
		}
	})

	t.Run("skips a peer without vtep mac", func(t *testing.T) {
		noMAC := slices.Clone(peers)
		noMAC[1].VTEPMAC = nil // n3
		res, err := n1.overlay.Sync(noMAC)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(SyncResult{Direct: []string{"n2"}, VXLAN: []string{"n2"}, Skipped: []string{"n3"}, Changes: 5}, res); diff != "" {
			t.Errorf("Sync result (-want +got):\n%s", diff)
		}
		if _, err := n1.overlay.Sync(peers); err != nil {
			t.Fatal(err)
		}
		checkPath(t, n1, n3, false, true)
	})

	t.Run("removing a peer removes its entries", func(t *testing.T) {
		res, err := n1.overlay.Sync(peers[:1])
		if err != nil {
			t.Fatal(err)
		}
		// n3's two routes, two neighbour entries and its FDB entry.
		if res.Changes != 5 {
			t.Errorf("Sync made %d changes, want 5", res.Changes)
		}
		checkListing(t, n1, `
10.244.2.0/24 via 198.18.0.2 dev eth0
fd00:10:244:2::/64 via fd00:10:244:2:: dev nodenet-vxlan metric 1024 onlink pref medium
fd00:10:244:2:: lladdr 0e:4e:c6:12:00:02 PERMANENT
0e:4e:c6:12:00:02 dst 198.18.0.2 self permanent`)
		checkPath(t, n1, c.node(2), false, false)
	})
}

func TestOverlayForcedModes(t *testing.T) {
	t.Run("direct", func(t *testing.T) {
		c := newClusterWith(t, ModeDirect, false, directPeers)
		n1, n2 := c.node(1), c.node(2)
		if n1.vtep.MAC != nil || n1.vtep.MTU != 1500 {
			t.Errorf("direct mode Ensure returned %v %d, want no MAC and the uplink's 1500", n1.vtep.MAC, n1.vtep.MTU)
		}
		if linkExists(t, n1.nl, VXLANDevice) {
			t.Errorf("direct mode created %s", VXLANDevice)
		}
		res, err := n1.overlay.Sync(c.peersOf(n1))
		want := "peer n3: address 198.18.1.3 is on no subnet of eth0: direct routing needs a shared L2 segment"
		if err == nil || err.Error() != want {
			t.Errorf("Sync error %v, want %q", err, want)
		}
		if diff := cmp.Diff(SyncResult{Direct: []string{"n2"}, Rejected: []string{"n3"}}, res); diff != "" {
			t.Errorf("Sync result (-want +got):\n%s", diff)
		}
		checkListing(t, n1, `10.244.2.0/24 via 198.18.0.2 dev eth0`)
		checkPath(t, n1, n2, false, false)
		checkPath(t, n2, n1, false, false)
	})

	t.Run("vxlan", func(t *testing.T) {
		c := newCluster(t, ModeVXLAN, false)
		n1, n2 := c.node(1), c.node(2)
		res := syncNoChanges(t, n1, n1.overlay, c.peersOf(n1))
		if diff := cmp.Diff(SyncResult{VXLAN: []string{"n2", "n3"}}, res); diff != "" {
			t.Errorf("Sync result (-want +got):\n%s", diff)
		}
		checkPath(t, n1, n2, false, true)
		checkPath(t, n2, n1, false, true)
		checkPath(t, n1, c.node(3), false, true)

		// Switching to direct moves the routes to n2 off the device, then removes it.
		for _, cn := range []*clusterNode{n1, n2} {
			o := c.newOverlay(t, cn, ModeDirect)
			res, err := o.Sync(c.peersOf(cn))
			if err == nil || !strings.Contains(err.Error(), "peer n3") {
				t.Errorf("%s: Sync error %v, want n3 rejected", cn.name(), err)
			}
			if !slices.Equal(res.Direct, []string{c.peersOf(cn)[0].Name}) {
				t.Errorf("%s: Sync result %+v", cn.name(), res)
			}
			if linkExists(t, cn.nl, VXLANDevice) {
				t.Errorf("%s: %s still there in direct mode", cn.name(), VXLANDevice)
			}
		}
		checkListing(t, n1, `10.244.2.0/24 via 198.18.0.2 dev eth0`)
		checkPath(t, n1, n2, false, false)
	})
}

// directPeers are the peers a node can reach directly in the test cluster: n1 and n2 each
// other, n3 nobody, as it is on a segment of its own.
func directPeers(c *cluster, cn *clusterNode) []Peer {
	var peers []Peer
	for _, p := range c.peersOf(cn) {
		if cn.num < 3 && p.Name != "n3" {
			peers = append(peers, p)
		}
	}
	return peers
}
