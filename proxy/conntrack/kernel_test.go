package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/conntrack"
	vnl "github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nstest"
	"github.com/nodenet/nodenet/proxy"
)

// The kernel tests' address plan: a client on the underlay sends to
// Service IPs and a node port of the node namespace, whose nft rules DNAT
// to backend A or B, each in its own namespace behind the node.
var (
	clientIP  = []netip.Addr{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("fd00:198:18::2")}
	nodeIP    = []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("fd00:198:18::1")}
	backendIP = map[string][]netip.Addr{
		"A": {netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00:244:1::2")},
		"B": {netip.MustParseAddr("10.244.2.2"), netip.MustParseAddr("fd00:244:2::2")},
	}
	gatewayIP = map[string][]netip.Addr{
		"A": {netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("fd00:244:1::1")},
		"B": {netip.MustParseAddr("10.244.2.1"), netip.MustParseAddr("fd00:244:2::1")},
	}
	// dnsIP moves from A to B in the tests; otherIP stays on A.
	dnsIP   = []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")}
	otherIP = []netip.Addr{netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd00:96::11")}
)

const (
	servicePort  = 53
	nodePort     = 30053
	endpointPort = 8053
)

// topology is a client, a node and two backends, each a network namespace
// made for the test.
type topology struct {
	client, node ns.NetNS
	backend      map[string]ns.NetNS
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{client: nstest.NewNS(t), node: nstest.NewNS(t), backend: map[string]ns.NetNS{"A": nstest.NewNS(t), "B": nstest.NewNS(t)}}
	link(t, tp.node, tp.client, "client", nodeIP, clientIP)
	for _, name := range []string{"A", "B"} {
		link(t, tp.node, tp.backend[name], "backend"+name, gatewayIP[name], backendIP[name])
	}
	err := tp.node.Do(func(ns.NetNS) error {
		return errors.Join(
			os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644),
			os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644))
	})
	if err != nil {
		t.Fatalf("enable forwarding in the node: %v", err)
	}
	return tp
}

// link joins node and peer with a veth, named hostName on the node and
// eth0 in peer, one /24 or /64 per family, and makes the node peer's
// default gateway.
func link(t *testing.T, node, peer ns.NetNS, hostName string, nodeAddrs, peerAddrs []netip.Addr) {
	t.Helper()
	nodeH, peerH := nstest.NetlinkHandle(t, node), nstest.NetlinkHandle(t, peer)
	veth := &vnl.Veth{LinkAttrs: vnl.LinkAttrs{Name: hostName}, PeerName: "eth0", PeerNamespace: vnl.NsFd(int(peer.Fd()))}
	if err := nodeH.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", hostName, err)
	}
	for _, side := range []struct {
		h     *vnl.Handle
		name  string
		addrs []netip.Addr
	}{{nodeH, hostName, nodeAddrs}, {peerH, "eth0", peerAddrs}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range side.addrs {
			bits := 24
			if a.Is6() {
				bits = 64
			}
			// No duplicate address detection: the address is usable at once.
			addr := &vnl.Addr{IPNet: ipNet(netip.PrefixFrom(a, bits)), Flags: unix.IFA_F_NODAD}
			if err := side.h.AddrAdd(l, addr); err != nil {
				t.Fatalf("add %s to %s: %v", a, side.name, err)
			}
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	lo, err := peerH.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := peerH.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	eth, err := peerH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, gw := range nodeAddrs {
		if err := peerH.RouteAdd(&vnl.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// route replaces table inet cttest in the node: the dns Service IPs (UDP
// and TCP) and the node port go to backend dnsTo, the other Service IPs to
// A.
func (tp *topology) route(t *testing.T, dnsTo string) {
	t.Helper()
	var rules []string
	for i, fam := range []string{"ip", "ip6"} {
		to := func(name string) string {
			return netip.AddrPortFrom(backendIP[name][i], endpointPort).String()
		}
		rules = append(rules,
			fmt.Sprintf("%s daddr %s udp dport %d dnat %s to %s", fam, dnsIP[i], servicePort, fam, to(dnsTo)),
			fmt.Sprintf("%s daddr %s tcp dport %d dnat %s to %s", fam, dnsIP[i], servicePort, fam, to(dnsTo)),
			fmt.Sprintf("%s daddr %s udp dport %d dnat %s to %s", fam, otherIP[i], servicePort, fam, to("A")),
			fmt.Sprintf("%s daddr %s udp dport %d dnat %s to %s", fam, nodeIP[i], nodePort, fam, to(dnsTo)))
	}
	script := fmt.Sprintf(`table inet cttest
delete table inet cttest
table inet cttest {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		%s
	}
}
`, strings.Join(rules, "\n\t\t"))
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(tp.node.Path()), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s\n%s", err, out, script)
	}
}

// serveUDP answers every datagram to endpointPort in n with name.
func serveUDP(t *testing.T, n ns.NetNS, name string) {
	t.Helper()
	var pc net.PacketConn
	err := n.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", endpointPort))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp in %s: %v", name, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed at cleanup
			}
			if _, err := pc.WriteTo([]byte(name), from); err != nil {
				t.Errorf("backend %s: reply to %s: %v", name, from, err)
			}
		}
	})
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
}

// ask sends one datagram from the client's src to dst and returns the
// name of the backend that answered.
func (tp *topology) ask(src, dst netip.AddrPort) (string, error) {
	var answer string
	err := tp.client.Do(func(ns.NetNS) error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(src))
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		if _, err := c.WriteToUDPAddrPort([]byte("who"), dst); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		if from.Addr().Unmap() != dst.Addr() || from.Port() != dst.Port() {
			return fmt.Errorf("answer from %s, want from %s", from, dst)
		}
		answer = string(buf[:n])
		return nil
	})
	return answer, err
}

// askTCP connects from the client to dst and returns the backend's name.
func (tp *topology) askTCP(dst netip.AddrPort) (string, error) {
	var answer string
	err := tp.client.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", dst.String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		answer = strings.TrimSpace(string(buf[:n]))
		return err
	})
	return answer, err
}

// replies lists, for each entry of the node's table with protocol proto
// sent to dst (and from src, if valid), who answers it: the backend's name
// or its address.
func (tp *topology) replies(t *testing.T, conn *conntrack.Conn, proto uint8, src, dst netip.AddrPort) []string {
	t.Helper()
	flows, err := conn.Dump(nil)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	var out []string
	for _, f := range flows {
		o := f.TupleOrig
		if o.Proto.Protocol != proto || o.IP.DestinationAddress != dst.Addr() || o.Proto.DestinationPort != dst.Port() {
			continue
		}
		if src.IsValid() && (o.IP.SourceAddress != src.Addr() || o.Proto.SourcePort != src.Port()) {
			continue
		}
		from := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort)
		who := from.String()
		for name, addrs := range backendIP {
			if slices.Contains(addrs, from.Addr()) && from.Port() == endpointPort {
				who = name
			}
		}
		out = append(out, who)
	}
	slices.Sort(out)
	return out
}

// dialTable opens a conntrack socket in the node, never in the host's
// namespace.
func dialTable(t *testing.T, n ns.NetNS) *conntrack.Conn {
	t.Helper()
	conn, err := conntrack.Dial(&netlink.Config{NetNS: int(n.Fd())})
	if err != nil {
		t.Fatalf("dial conntrack: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// stateOn is the Services of route(dnsTo) as the proxy sees them.
func stateOn(dnsTo string) proxy.State {
	ports := map[string]int32{"dns": endpointPort, "dns-tcp": endpointPort}
	eps := func(name string) []proxy.Endpoint {
		var out []proxy.Endpoint
		for _, a := range backendIP[name] {
			out = append(out, proxy.Endpoint{Addr: a, Ports: ports, Ready: true, Serving: true})
		}
		return out
	}
	return proxy.State{
		Services: []proxy.Service{
			{Namespace: "ns", Name: "dns", ClusterIPs: dnsIP, Ports: []proxy.ServicePort{
				{Name: "dns", Protocol: proxy.UDP, Port: servicePort, NodePort: nodePort},
				{Name: "dns-tcp", Protocol: proxy.TCP, Port: servicePort},
			}},
			{Namespace: "ns", Name: "other", ClusterIPs: otherIP, Ports: []proxy.ServicePort{
				{Name: "dns", Protocol: proxy.UDP, Port: servicePort},
			}},
		},
		Endpoints: map[proxy.ServiceKey][]proxy.Endpoint{
			{Namespace: "ns", Name: "dns"}:   eps(dnsTo),
			{Namespace: "ns", Name: "other"}: eps("A"),
		},
	}
}

// TestCleanKernel moves a UDP Service from backend A to backend B and
// shows that a client sending from a fixed port keeps reaching A through
// its conntrack entry until Clean deletes it, then reaches B; entries of
// another Service still on A and of TCP stay.
func TestCleanKernel(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireTool(t, "nft")
	nstest.RequireTool(t, "ip")
	tp := newTopology(t)
	tp.route(t, "A")
	for name, n := range tp.backend {
		serveUDP(t, n, name)
		nstest.Serve(t, n, fmt.Sprintf(":%d", endpointPort), func(net.Conn) string { return name })
	}
	table := dialTable(t, tp.node)

	type flow struct {
		name     string
		src, dst netip.AddrPort
	}
	var moved, kept []flow
	for i, fam := range []string{"IPv4", "IPv6"} {
		client := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(clientIP[i], port) }
		moved = append(moved,
			flow{fam + " cluster IP", client(40001), netip.AddrPortFrom(dnsIP[i], servicePort)},
			flow{fam + " node port", client(40002), netip.AddrPortFrom(nodeIP[i], nodePort)})
		kept = append(kept, flow{fam + " other Service", client(40003), netip.AddrPortFrom(otherIP[i], servicePort)})
	}
	for _, f := range slices.Concat(moved, kept) {
		if got, err := tp.ask(f.src, f.dst); err != nil || got != "A" {
			t.Fatalf("%s: answer %q, %v; want A", f.name, got, err)
		}
		if got := tp.replies(t, table, unix.IPPROTO_UDP, f.src, f.dst); !slices.Equal(got, []string{"A"}) {
			t.Fatalf("%s: entries answered by %v, want [A]", f.name, got)
		}
	}
	for i := range dnsIP {
		if got, err := tp.askTCP(netip.AddrPortFrom(dnsIP[i], servicePort)); err != nil || got != "A" {
			t.Fatalf("TCP to %s: answer %q, %v; want A", dnsIP[i], got, err)
		}
	}

	tp.route(t, "B")
	for _, f := range moved {
		if got, err := tp.ask(f.src, f.dst); err != nil || got != "A" {
			t.Fatalf("%s after the move, before Clean: answer %q, %v; want A through the old entry", f.name, got, err)
		}
	}

	c, err := New(Config{NetNS: int(tp.node.Fd()), Log: zaptest.NewLogger(t), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := c.Clean(stateOn("B"))
	if err != nil || n != len(moved) {
		t.Fatalf("Clean = %d, %v; want %d, nil", n, err, len(moved))
	}
	for _, f := range moved {
		if got := tp.replies(t, table, unix.IPPROTO_UDP, f.src, f.dst); len(got) != 0 {
			t.Errorf("%s: entries answered by %v left, want none", f.name, got)
		}
	}
	for _, f := range kept {
		if got := tp.replies(t, table, unix.IPPROTO_UDP, f.src, f.dst); !slices.Equal(got, []string{"A"}) {
			t.Errorf("%s: entries answered by %v, want [A] kept", f.name, got)
		}
	}
	for i := range dnsIP {
		dst := netip.AddrPortFrom(dnsIP[i], servicePort)
		if got := tp.replies(t, table, unix.IPPROTO_TCP, netip.AddrPort{}, dst); !slices.Equal(got, []string{"A"}) {
			t.Errorf("TCP to %s: entries answered by %v, want [A] kept", dst, got)
		}
	}
	for _, f := range moved {
		if got, err := tp.ask(f.src, f.dst); err != nil || got != "B" {
			t.Errorf("%s after Clean: answer %q, %v; want B", f.name, got, err)
		}
	}
	if n, err := c.Clean(stateOn("B")); err != nil || n != 0 {
		t.Errorf("second Clean = %d, %v; want 0, nil", n, err)
	}
}

// TestDeleteGoneKernel checks what Clean relies on: deleting an entry that
// is no longer there fails with ENOENT.
func TestDeleteGoneKernel(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireTool(t, "nft")
	nstest.RequireTool(t, "ip")
	tp := newTopology(t)
	tp.route(t, "A")
	serveUDP(t, tp.backend["A"], "A")
	src, dst := netip.AddrPortFrom(clientIP[0], 40001), netip.AddrPortFrom(dnsIP[0], servicePort)
	if got, err := tp.ask(src, dst); err != nil || got != "A" {
		t.Fatalf("answer %q, %v; want A", got, err)
	}
	table := dialTable(t, tp.node)
	flows, err := table.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.TupleOrig.IP.DestinationAddress == dst.Addr() })
	if i < 0 {
		t.Fatalf("no entry to %s", dst)
	}
	if err := table.Delete(flows[i]); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := table.Delete(flows[i]); !errors.Is(err, unix.ENOENT) {
		t.Errorf("second delete: %v, want ENOENT", err)
	}
}
