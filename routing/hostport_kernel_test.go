package routing

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/proxy"
)

// hpLab is a node with the pod bridge, an uplink to an outside client and HostPorts. The node has
// 198.18.0.2 and 198.18.0.3 and fd00:198::2 on up0; the client 198.18.0.100 and fd00:198::100.
type hpLab struct {
	nd      *node
	l       *Local
	hp      *HostPorts
	outside ns.NetNS
}

const (
	hpNode4   = "198.18.0.2"
	hpNode4b  = "198.18.0.3"
	hpNode6   = "fd00:198::2"
	hpClient4 = "198.18.0.100"
	hpClient6 = "fd00:198::100"
)

func newHPLab(t *testing.T) *hpLab {
	t.Helper()
	requireRoot(t)
	requireTool(t, "nft")
	nd := newNode(t)
	outside := uplink(t, nd, 1500)
	up0, err := nd.nl.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{hpNode4b + "/24", hpNode6 + "/64"} {
		if err := nd.nl.AddrAdd(up0, netlinkAddr(netip.MustParsePrefix(a))); err != nil {
			t.Fatal(err)
		}
	}
	lo, err := nd.nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nd.nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	oh := nsHandle(t, outside)
	eth0, err := oh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := oh.AddrAdd(eth0, netlinkAddr(netip.MustParsePrefix(hpClient6+"/64"))); err != nil {
		t.Fatal(err)
	}
	l := nd.local(t, dualStack)
	nd.ensure(t, l)
	lab := &hpLab{nd: nd, l: l, hp: lab0(t, nd), outside: outside}
	// Neighbour discovery on the fresh IPv6 link, before the first test connection.
	inNS(t, outside, "ping", "-c", "1", "-W", "5", hpNode6)
	return lab
}

// lab0 is a HostPorts of the node, as a freshly started daemon has it.
func lab0(t *testing.T, nd *node) *HostPorts {
	return NewHostPorts(HostPortsConfig{NetnsFD: int(nd.ns.Fd())}, zaptest.NewLogger(t))
}

func (lab *hpLab) mapPorts(t *testing.T, p *pod, mappings ...PortMapping) {
	t.Helper()
	if err := lab.hp.Map(attachmentOf(p), podAddrs(p), mappings); err != nil {
		t.Fatalf("Map %v: %v", mappings, err)
	}
}

func attachmentOf(p *pod) Attachment {
	return Attachment{ContainerID: "c-" + p.net.HostVeth, IfName: p.net.IfName}
}

func podAddrs(p *pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.net.IPs {
		out = append(out, ip.Addr())
	}
	return out
}

// listSet is nft's listing of a map or set.
func listSet(t *testing.T, nd *node, s *nftables.Set) string {
	t.Helper()
	kind := "set"
	if s.IsMap {
		kind = "map"
	}
	return inNS(t, nd.ns, "nft", "list", kind, "inet", tableName, s.Name)
}

func tcpPort(host, container int) PortMapping {
	return PortMapping{HostPort: host, ContainerPort: container, Protocol: "tcp"}
}

// reachCase is one connection attempt: from a namespace to an address, and the source address
// the pod's server must see, or "" when the connection must not reach it.
type reachCase struct {
	name     string
	from     ns.NetNS
	addr     string
	wantPeer string
}

func checkReach(t *testing.T, cases []reachCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := peerSeen(tc.from, tc.addr)
			if tc.wantPeer == "" {
				if err == nil {
					t.Errorf("reached a server at %s (it saw %s), want no mapping", tc.addr, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != netip.MustParseAddr(tc.wantPeer) {
				t.Errorf("server saw %s, want %s", got, tc.wantPeer)
			}
		})
	}
}

// TestHostPortRealPackets sends real TCP connections at the mappings of a dual-stack pod: from a
// client outside the node, from the node itself, from the pod (hairpin) and from another pod; and
// checks that a mapping with a hostIP answers on that address only and that no mapping captures
// traffic that only passes through the node (the bug of CVE-2025-67499).
func TestHostPortRealPackets(t *testing.T) {
	lab := newHPLab(t)
	a := attach(t, lab.l, "hp-a", "10.244.1.2/24", "fd00:10:244:1::2/64")
	b := attach(t, lab.l, "hp-b", "10.244.1.3/24", "fd00:10:244:1::3/64")
	listen(t, a.ns, "[::]:80")
	listen(t, a.ns, "[::]:81")
	// The outside client serves the same ports, to see that traffic to it is left alone.
	listen(t, lab.outside, "[::]:8080")
	listen(t, lab.outside, "[::]:8081")
	lab.mapPorts(t, a, tcpPort(8080, 80), PortMapping{HostPort: 8081, ContainerPort: 81, HostIP: hpNode4})

	checkReach(t, []reachCase{
		{"outside to node address", lab.outside, net.JoinHostPort(hpNode4, "8080"), hpClient4},
		{"outside to another node address", lab.outside, net.JoinHostPort(hpNode4b, "8080"), hpClient4},
		{"outside to node ipv6 address", lab.outside, net.JoinHostPort(hpNode6, "8080"), hpClient6},
		{"outside to the hostIP", lab.outside, net.JoinHostPort(hpNode4, "8081"), hpClient4},
		{"outside to another node address than the hostIP", lab.outside, net.JoinHostPort(hpNode4b, "8081"), ""},
		{"outside to the hostIP's port over ipv6", lab.outside, net.JoinHostPort(hpNode6, "8081"), ""},
		{"node to its own address", lab.nd.ns, net.JoinHostPort(hpNode4, "8080"), hpNode4},
		{"node to its own ipv6 address", lab.nd.ns, net.JoinHostPort(hpNode6, "8080"), hpNode6},
		{"node to the hostIP", lab.nd.ns, net.JoinHostPort(hpNode4, "8081"), hpNode4},
		{"node to another address than the hostIP", lab.nd.ns, net.JoinHostPort(hpNode4b, "8081"), ""},
		{"node to loopback is not mapped", lab.nd.ns, net.JoinHostPort("127.0.0.1", "8080"), ""},
		{"node to ipv6 loopback is not mapped", lab.nd.ns, net.JoinHostPort("::1", "8080"), ""},
		{"pod to its own hostPort, masqueraded (hairpin)", a.ns, net.JoinHostPort(hpNode4, "8080"), "10.244.1.1"},
		{"pod to its own hostPort over ipv6", a.ns, net.JoinHostPort(hpNode6, "8080"), "fd00:10:244:1::1"},
		{"other pod to the hostPort keeps its address", b.ns, net.JoinHostPort(hpNode4, "8080"), "10.244.1.3"},
		{"other pod to the gateway address", b.ns, net.JoinHostPort("10.244.1.1", "8080"), "10.244.1.3"},
		{"other pod to the hostIP", b.ns, net.JoinHostPort(hpNode4, "8081"), "10.244.1.3"},
		// Through the node, to the outside client on the mapped ports: masqueraded as usual,
		// never sent to the pod.
		{"pod to outside on a mapped port is not captured", b.ns, net.JoinHostPort(hpClient4, "8080"), hpNode4},
		{"pod to outside on the hostIP's port is not captured", b.ns, net.JoinHostPort(hpClient4, "8081"), hpNode4},
	})
}

// udpAsk sends msg from n, from the fixed local port, to addr and returns the answer, or an
// error when none comes (a port unreachable from the node, or silence).
func udpAsk(n ns.NetNS, localPort int, addr, msg string) (string, error) {
	var answer string
	err := n.Do(func(ns.NetNS) error {
		raddr, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp", &net.UDPAddr{Port: localPort}, raddr)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
			return err
		}
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, 64)
		k, err := c.Read(buf)
		answer = string(buf[:k])
		return err
	})
	return answer, err
}

// udpName answers every datagram with name, until the test ends.
func udpName(t *testing.T, n ns.NetNS, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	if err := n.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from) // a lost answer shows as a test failure
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
}

// udpEntries lists the node's UDP conntrack entries to port, as "orig dst < reply src".
func udpEntries(t *testing.T, nd *node, port uint16) []string {
	t.Helper()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(nd.ns.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range flows {
		if f.TupleOrig.Proto.Protocol == unix.IPPROTO_UDP && f.TupleOrig.Proto.DestinationPort == port {
			out = append(out, f.TupleOrig.IP.DestinationAddress.String()+" < "+f.TupleReply.IP.SourceAddress.String())
		}
	}
	return out
}

// TestHostPortUDPConntrack: a UDP client that keeps its source port follows a hostPort from one
// pod to the next. Removing a mapping deletes the entries it sent to its pod (else the client
// would keep reaching the old pod); adding one deletes the entries of datagrams that reached the
// node itself while nothing was mapped (else the client would never reach the new pod).
func TestHostPortUDPConntrack(t *testing.T) {
	lab := newHPLab(t)
	a := attach(t, lab.l, "hp-a", "10.244.1.2/24")
	b := attach(t, lab.l, "hp-b", "10.244.1.3/24")
	udpName(t, a.ns, ":5353", "a")
	udpName(t, b.ns, ":5353", "b")
	const clientPort = 40000
	node := net.JoinHostPort(hpNode4, "53")
	udp := PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp"}

	lab.mapPorts(t, a, udp)
	if got, err := udpAsk(lab.outside, clientPort, node, "q"); err != nil || got != "a" {
		t.Fatalf("first answer %q, %v; want pod a's", got, err)
	}
	if err := lab.hp.Unmap(attachmentOf(a)); err != nil {
		t.Fatal(err)
	}
	if got := udpEntries(t, lab.nd, 53); len(got) != 0 {
		t.Errorf("conntrack entries to port 53 left after the mapping went: %v", got)
	}
	// Nothing mapped: the node itself answers (port unreachable), not pod a.
	if got, err := udpAsk(lab.outside, clientPort, node, "q"); err == nil {
		t.Errorf("answer %q with nothing mapped", got)
	}
	if got := udpEntries(t, lab.nd, 53); len(got) != 1 || got[0] != hpNode4+" < "+hpNode4 {
		t.Errorf("entries while nothing is mapped: %v, want one to the node itself", got)
	}
	lab.mapPorts(t, b, udp)
	if got, err := udpAsk(lab.outside, clientPort, node, "q"); err != nil || got != "b" {
		t.Errorf("answer after mapping pod b: %q, %v; want pod b's", got, err)
	}
	if diff := cmp.Diff([]string{hpNode4 + " < 10.244.1.3"}, udpEntries(t, lab.nd, 53)); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
}

// TestHostPortAdoptAfterRestart: a new HostPorts, as a restarted daemon makes, keeps the
// mappings of live pods without sending a single transaction, and removes those of pods that
// are gone.
func TestHostPortAdoptAfterRestart(t *testing.T) {
	lab := newHPLab(t)
	a := attach(t, lab.l, "hp-a", "10.244.1.2/24", "fd00:10:244:1::2/64")
	b := attach(t, lab.l, "hp-b", "10.244.1.3/24")
	listen(t, a.ns, "[::]:80")
	listen(t, b.ns, "[::]:80")
	lab.mapPorts(t, a, tcpPort(8080, 80), PortMapping{HostPort: 8081, ContainerPort: 80, HostIP: hpNode6})
	lab.mapPorts(t, b, tcpPort(9090, 80))
	before := inNS(t, lab.nd.ns, "nft", "list", "table", "inet", tableName)

	restarted := lab0(t, lab.nd)
	live := map[Attachment][]netip.Addr{attachmentOf(a): podAddrs(a), attachmentOf(b): podAddrs(b)}
	if n := nftTransactions(t, lab.nd, func() {
		if err := restarted.Adopt(live); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Adopt of what is there sent %d transactions", n)
	}
	if after := inNS(t, lab.nd.ns, "nft", "list", "table", "inet", tableName); after != before {
		t.Errorf("table changed:\n--- before\n%s\n--- after\n%s", before, after)
	}
	for _, p := range []*pod{a, b} {
		var ms []PortMapping
		if p == a {
			ms = []PortMapping{tcpPort(8080, 80), {HostPort: 8081, ContainerPort: 80, HostIP: hpNode6}}
		} else {
			ms = []PortMapping{tcpPort(9090, 80)}
		}
		if err := restarted.Check(attachmentOf(p), podAddrs(p), ms); err != nil {
			t.Errorf("Check after restart: %v", err)
		}
	}
	// The adopted owners count for conflicts at once.
	c := attach(t, lab.l, "hp-c", "10.244.1.4/24")
	var conflict *PortConflictError
	if err := restarted.Map(attachmentOf(c), podAddrs(c), []PortMapping{tcpPort(9090, 80)}); !errors.As(err, &conflict) {
		t.Errorf("Map of an adopted port: %v, want a conflict", err)
	}

	// Pod b is gone (its DEL never came): its mappings go.
	delete(live, attachmentOf(b))
	if err := lab0(t, lab.nd).Adopt(live); err != nil {
		t.Fatal(err)
	}
	checkReach(t, []reachCase{
		{"kept", lab.outside, net.JoinHostPort(hpNode4, "8080"), hpClient4},
		{"kept with hostIP", lab.outside, net.JoinHostPort(hpNode6, "8081"), hpClient6},
		{"removed", lab.outside, net.JoinHostPort(hpNode4, "9090"), ""},
	})
	out := inNS(t, lab.nd.ns, "nft", "list", "set", "inet", tableName, "hostport-hairpin-v4")
	if strings.Contains(out, "10.244.1.3") {
		t.Errorf("hairpin of the gone pod left:\n%s", out)
	}
}

func TestHostPortMapUnmapCheck(t *testing.T) {
	lab := newHPLab(t)
	a := attach(t, lab.l, "hp-a", "10.244.1.2/24", "fd00:10:244:1::2/64")
	b := attach(t, lab.l, "hp-b", "10.244.1.3/24", "fd00:10:244:1::3/64")
	listen(t, a.ns, "[::]:80")
	listen(t, a.ns, "[::]:81")
	mappings := []PortMapping{tcpPort(8080, 80), {HostPort: 8443, ContainerPort: 81, HostIP: hpNode4}}
	lab.mapPorts(t, a, mappings...)
	att := attachmentOf(a)

	t.Run("the same again sends nothing", func(t *testing.T) {
		if n := nftTransactions(t, lab.nd, func() { lab.mapPorts(t, a, mappings...) }); n != 0 {
			t.Errorf("%d transactions", n)
		}
		if n := nftTransactions(t, lab.nd, func() {
			if err := lab.hp.Ensure(); err != nil {
				t.Error(err)
			}
		}); n != 0 {
			t.Errorf("Ensure with all in place: %d transactions", n)
		}
	})
	t.Run("a pod without mappings sends nothing", func(t *testing.T) {
		if n := nftTransactions(t, lab.nd, func() { lab.mapPorts(t, b) }); n != 0 {
			t.Errorf("%d transactions", n)
		}
		if err := lab.hp.Unmap(attachmentOf(b)); err != nil {
			t.Error(err)
		}
	})
	t.Run("conflicts", func(t *testing.T) {
		for _, m := range []PortMapping{
			tcpPort(8080, 80),
			{HostPort: 8080, ContainerPort: 80, HostIP: hpNode4b},
			{HostPort: 8443, ContainerPort: 80},
			{HostPort: 8443, ContainerPort: 80, HostIP: hpNode4},
		} {
			err := lab.hp.Map(attachmentOf(b), podAddrs(b), []PortMapping{m})
			var conflict *PortConflictError
			if !errors.As(err, &conflict) || conflict.Holder != att.key() {
				t.Errorf("Map %s: %v, want a conflict with %s", m, err, att.key())
			}
		}
		// Another address, another protocol: no conflict.
		for _, m := range []PortMapping{{HostPort: 8443, ContainerPort: 80, HostIP: hpNode4b}, {HostPort: 8080, ContainerPort: 80, Protocol: "udp"}} {
			if err := lab.hp.Map(attachmentOf(b), podAddrs(b), []PortMapping{m}); err != nil {
				t.Errorf("Map %s: %v", m, err)
			}
		}
		if err := lab.hp.Unmap(attachmentOf(b)); err != nil {
			t.Error(err)
		}
	})
	t.Run("Check", func(t *testing.T) {
		if err := lab.hp.Check(att, podAddrs(a), mappings); err != nil {
			t.Errorf("Check: %v", err)
		}
		if err := lab.hp.Check(att, podAddrs(a), mappings[:1]); err == nil {
			t.Error("Check with fewer mappings passed")
		}
		inNS(t, lab.nd.ns, "nft", "delete", "element", "inet", tableName, "hostport-any-v6", "{ tcp . 8080 }")
		if err := lab.hp.Check(att, podAddrs(a), mappings); err == nil || !strings.Contains(err.Error(), "missing from the kernel") {
			t.Errorf("Check with an element deleted behind its back: %v", err)
		}
		inNS(t, lab.nd.ns, "nft", "flush", "chain", "inet", tableName, hpChainPrerouting)
		if err := lab.hp.Check(att, podAddrs(a), mappings); err == nil || !strings.Contains(err.Error(), "rules of chain hostport-prerouting") {
			t.Errorf("Check with a chain flushed: %v", err)
		}
	})
	t.Run("Ensure puts back what was removed", func(t *testing.T) {
		if err := lab.hp.Ensure(); err != nil {
			t.Fatal(err)
		}
		if err := lab.hp.Check(att, podAddrs(a), mappings); err != nil {
			t.Errorf("Check after Ensure: %v", err)
		}
		checkReach(t, []reachCase{
			{"ipv4", lab.outside, net.JoinHostPort(hpNode4, "8080"), hpClient4},
			{"ipv6", lab.outside, net.JoinHostPort(hpNode6, "8080"), hpClient6},
		})
	})
	t.Run("changing the pod port replaces the element", func(t *testing.T) {
		lab.mapPorts(t, a, tcpPort(8080, 81), mappings[1])
		checkReach(t, []reachCase{{"new port", lab.outside, net.JoinHostPort(hpNode4, "8080"), hpClient4}})
		if out := inNS(t, lab.nd.ns, "nft", "list", "map", "inet", tableName, "hostport-any-v4"); !strings.Contains(out, "10.244.1.2 . 81") {
			t.Errorf("map not updated:\n%s", out)
		}
		lab.mapPorts(t, a, mappings...)
	})
	t.Run("Unmap removes everything, twice is fine", func(t *testing.T) {
		for range 2 {
			if err := lab.hp.Unmap(att); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range wantSets(lab.hp.table()) {
			if out := listSet(t, lab.nd, s); strings.Contains(out, "elements") {
				t.Errorf("%s not empty:\n%s", s.Name, out)
			}
		}
		checkReach(t, []reachCase{{"gone", lab.outside, net.JoinHostPort(hpNode4, "8080"), ""}})
	})
	t.Run("Unmap after the table was deleted behind its back", func(t *testing.T) {
		lab.mapPorts(t, a, mappings...)
		inNS(t, lab.nd.ns, "nft", "delete", "table", "inet", tableName)
		if err := lab.hp.Unmap(att); err != nil {
			t.Errorf("Unmap: %v", err)
		}
		lab.mapPorts(t, a, mappings...)
		checkReach(t, []reachCase{{"mapped again", lab.outside, net.JoinHostPort(hpNode4, "8080"), hpClient4}})
	})
}

// TestHostPortSharesTableWithProxy: the Service proxy's full syncs and routing's masquerade chain
// share table inet nodenet with the hostPort objects, and neither touches the other's.
func TestHostPortSharesTableWithProxy(t *testing.T) {
	lab := newHPLab(t)
	a := attach(t, lab.l, "hp-a", "10.244.1.2/24")
	listen(t, a.ns, "[::]:80")
	lab.mapPorts(t, a, tcpPort(8080, 80))
	hostPortObjects := func() string {
		var b strings.Builder
		for _, c := range hostPortChains() {
			b.WriteString(inNS(t, lab.nd.ns, "nft", "list", "chain", "inet", tableName, c.name))
		}
		for _, s := range wantSets(lab.hp.table()) {
			b.WriteString(listSet(t, lab.nd, s))
		}
		return b.String()
	}
	before := hostPortObjects()

	app := proxy.NewApplier(int(lab.nd.ns.Fd()))
	svc := proxy.Service{Namespace: "default", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []proxy.ServicePort{{Name: "http", Protocol: proxy.TCP, Port: 80, NodePort: 30080}}}
	st := proxy.State{
		Services:     []proxy.Service{svc},
		Endpoints:    map[proxy.ServiceKey][]proxy.Endpoint{svc.Key(): {{Addr: netip.MustParseAddr("10.244.1.2"), Ports: map[string]int32{"http": 80}, Ready: true, Serving: true}}},
		ClusterCIDRs: dualStack.ClusterCIDRs,
	}
	for _, m := range []proxy.Model{proxy.Build(st), proxy.Build(proxy.State{})} {
		if err := app.Apply(m); err != nil {
			t.Fatalf("proxy Apply: %v", err)
		}
		if after := hostPortObjects(); after != before {
			t.Errorf("hostPort objects changed by a proxy sync:\n--- before\n%s\n--- after\n%s", before, after)
		}
	}
	if err := app.Apply(proxy.Build(st)); err != nil {
		t.Fatal(err)
	}
	nd := lab.nd
	nd.ensure(t, lab.l)
	if n := nftTransactions(t, nd, func() {
		if err := lab.hp.Ensure(); err != nil {
			t.Error(err)
		}
	}); n != 0 {
		t.Errorf("Ensure beside the proxy's and routing's objects sent %d transactions", n)
	}
	checkReach(t, []reachCase{
		{"hostPort", lab.outside, net.JoinHostPort(hpNode4, "8080"), hpClient4},
		// Masqueraded by the proxy (an off-cluster client), onto the bridge's address.
		{"NodePort of the proxy", lab.outside, net.JoinHostPort(hpNode4, "30080"), "10.244.1.1"},
	})
}
