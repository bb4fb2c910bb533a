package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nstest"
)

// Kernel test helpers shared with the routing tests.
var (
	requireRoot = nstest.RequireRoot
	newNS       = nstest.NewNS
	nsHandle    = nstest.NetlinkHandle
	nftConn     = nstest.NFTConn
)

func requireNft(t *testing.T) {
	t.Helper()
	nstest.RequireTool(t, "nft")
}

// nftList runs `nft list table inet nodenet` inside n.
func nftList(t *testing.T, n ns.NetNS) string {
	t.Helper()
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.Command("nft", "list", "table", "inet", TableName).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	return string(out)
}

const (
	svcWeb    = "10.96.0.10"
	svcEmpty  = "10.96.0.11"
	svcSticky = "10.96.0.12"
	svcPlain  = "10.96.0.13"
	pod1      = "10.244.1.2"
	pod2      = "10.244.1.3"
	client    = "10.244.1.4"
	nodeGW    = "10.244.1.1"

	// The same over IPv6: the pods route through the node's link-local
	// gateway on each veth.
	svcWeb6   = "fd00:96::10"
	svcPlain6 = "fd00:96::13"
	pod1v6    = "fd00:244:1::2"
	pod2v6    = "fd00:244:1::3"
	client6   = "fd00:244:1::4"
	nodeGW6   = "fe80::1"
)

// kernelState has a ClusterIP service with a NodePort and two endpoints, a
// service without endpoints, one with ClientIP affinity, one whose port has
// no chain, and three IPv6 Services: one with a NodePort (a chain), one
// without (no chain), one with affinity.
func kernelState() State {
	web := ServiceKey{"ns", "web"}
	sticky := ServiceKey{"ns", "sticky"}
	plain := ServiceKey{"ns", "plain"}
	v6 := []Endpoint{ep(pod1v6, nodeA, http8080()), ep(pod2v6, nodeA, http8080())}
	return State{
		Node:         Node{Name: nodeA},
		ClusterCIDRs: []netip.Prefix{pf("10.244.0.0/16")},
		Services: []Service{
			{Namespace: "ns", Name: "web", ClusterIPs: []netip.Addr{a(svcWeb)}, Ports: httpPort(30080)},
			{Namespace: "ns", Name: "empty", ClusterIPs: []netip.Addr{a(svcEmpty)}, Ports: httpPort(0)},
			{Namespace: "ns", Name: "sticky", ClusterIPs: []netip.Addr{a(svcSticky)}, Ports: httpPort(0), SessionAffinityTimeout: time.Hour},
			{Namespace: "ns", Name: "plain", ClusterIPs: []netip.Addr{a(svcPlain)}, Ports: httpPort(0)},
			{Namespace: "ns", Name: "web6", ClusterIPs: []netip.Addr{a(svcWeb6)}, Ports: httpPort(30081)},
			{Namespace: "ns", Name: "plain6", ClusterIPs: []netip.Addr{a(svcPlain6)}, Ports: httpPort(0)},
			{Namespace: "ns", Name: "sticky6", ClusterIPs: []netip.Addr{a("fd00:96::12")}, Ports: httpPort(0), SessionAffinityTimeout: time.Hour},
		},
		Endpoints: map[ServiceKey][]Endpoint{
			{"ns", "web6"}:    v6,
			{"ns", "plain6"}:  v6,
			{"ns", "sticky6"}: v6,
			plain:             {ep(pod1, nodeA, http8080()), ep(pod2, nodeA, http8080())},
			web:               {ep(pod1, nodeA, http8080()), ep(pod2, nodeA, http8080())},
			sticky:            {ep(pod1, nodeA, http8080()), ep(pod2, nodeA, http8080())},
		},
	}
}

// addPodMasquerade stands in for the routing package: its chain, with one
// rule, in the shared table.
func addPodMasquerade(t *testing.T, c *nftables.Conn) {
	t.Helper()
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	ch := c.AddChain(&nftables.Chain{Name: podMasqueradeChain, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}})
	if err := c.Flush(); err != nil {
		t.Fatalf("add pod-masquerade: %v", err)
	}
}

func podMasqueradeRules(t *testing.T, c *nftables.Conn) int {
	t.Helper()
	rules, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}, &nftables.Chain{Name: podMasqueradeChain})
	if err != nil {
		t.Fatalf("rules of pod-masquerade: %v", err)
	}
	return len(rules)
}

func TestApplyKernel(t *testing.T) {
	requireRoot(t)
	requireNft(t)
	node := newNS(t)
	conn := nftConn(t, node)
	addPodMasquerade(t, conn)

	m := Build(kernelState())
	app := NewApplier(int(node.Fd()))
	if err := app.Apply(m); err != nil {
		t.Fatalf("Apply: %v", err)
	}

	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, c := range chains {
		have[c.Name] = true
	}
	for _, c := range m.Chains {
		if !have[c.Name] {
			t.Errorf("chain %s missing", c.Name)
		}
		rules, err := conn.GetRules(table, &nftables.Chain{Name: c.Name})
		if err != nil {
			t.Fatalf("rules of %s: %v", c.Name, err)
		}
		if len(rules) != len(c.Rules) {
			t.Errorf("chain %s has %d rules, want %d", c.Name, len(rules), len(c.Rules))
		}
	}
	if !have[podMasqueradeChain] || podMasqueradeRules(t, conn) != 1 {
		t.Errorf("pod-masquerade lost or changed")
	}
	sets, err := conn.GetSets(table)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		if s.Name != mapServiceIPs(IPv4) {
			continue
		}
		els, err := conn.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(els) != 3 { // web, sticky and plain; empty is in no-endpoint-services
			t.Errorf("%s has %d elements, want 3", s.Name, len(els))
		}
	}

	text := nftList(t, node)
	for _, want := range []string{
		"chain pod-masquerade",
		`10.96.0.10 . tcp . 80 comment "ns/web/tcp/http" : goto service-`,
		`10.96.0.11 . tcp . 80 comment "ns/empty/tcp/http" : goto reject-chain`,
		`tcp . 30080 comment "ns/web/tcp/http" : goto external-`,
		"ip daddr . meta l4proto . th dport vmap @service-ips-v4",
		"fib daddr type local",
		"numgen random mod 2 vmap { 0 : goto endpoint-",
		"dnat ip to 10.244.1.2:8080",
		"update @affinity-",
		"flags dynamic,timeout",
		"masquerade fully-random",
		"reject with tcp reset",
		// nft must be able to list the chainless port's rule and map.
		`10.96.0.13 . tcp . 80 comment "ns/plain/tcp/http" : goto pick-2-v4`,
		"dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @backends-v4",
		"typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport",
		"10.96.0.13 . tcp . 80 . 1 : 10.244.1.3 . 8080",
		// A chained port's index reads as it is, not byte-swapped.
		"numgen random mod 2 vmap { 0 : goto endpoint-",
		", 1 : goto endpoint-",
		// The same over IPv6.
		`fd00:96::13 . tcp . 80 comment "ns/plain6/tcp/http" : goto pick-2-v6`,
		"dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 2 map @backends-v6",
		"typeof ip6 daddr . meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport",
		"fd00:96::13 . tcp . 80 . 1 : fd00:244:1::3 . 8080",
		`fd00:96::10 . tcp . 80 comment "ns/web6/tcp/http" : goto service-`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("nft list table lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("nft list table:\n%s", text)
	}

	// An operator can name an endpoint's chain and affinity set to nft.
	var named []string
	for _, c := range m.Chains {
		if strings.HasPrefix(c.Name, "endpoint-") {
			named = append(named, "chain "+c.Name)
		}
	}
	for _, set := range m.Sets {
		if strings.HasPrefix(set.Name, "affinity-") {
			named = append(named, "set "+set.Name)
		}
	}
	if len(named) == 0 {
		t.Fatal("kernelState has no endpoint chain or affinity set")
	}
	for _, obj := range named {
		kind, name, _ := strings.Cut(obj, " ")
		err := node.Do(func(ns.NetNS) error {
			out, err := exec.Command("nft", "list", kind, "inet", TableName, name).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			return nil
		})
		if err != nil {
			t.Errorf("nft list %s: %v", obj, err)
		}
	}

	// The listing loads back with nft -f (an operator's saved ruleset): nft restates a few matches
	// in its own form, and the next Apply (the drift check's repair) puts back the same ruleset.
	saved := filepath.Join(t.TempDir(), "saved.nft")
	if err := os.WriteFile(saved, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	err = node.Do(func(ns.NetNS) error {
		out, err := exec.Command("sh", "-c", "nft delete table inet "+TableName+" && nft -f "+saved).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("nft -f of the listing: %v", err)
	}
	if err := NewApplier(int(node.Fd())).Apply(m); err != nil {
		t.Fatalf("Apply after nft -f: %v", err)
	}
	if again := nftList(t, node); again != text {
		t.Errorf("after nft -f and Apply the ruleset differs:\n%s", again)
	}

	// A second Apply, through a new Applier as after a restart, leaves the
	// same ruleset.
	if err := NewApplier(int(node.Fd())).Apply(m); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if again := nftList(t, node); again != text {
		t.Errorf("second Apply changed the ruleset:\n%s", again)
	}

	// Dropping a service removes its chains; pod-masquerade stays.
	st := kernelState()
	st.Services = st.Services[:2]
	if err := app.Apply(Build(st)); err != nil {
		t.Fatalf("third Apply: %v", err)
	}
	text = nftList(t, node)
	if strings.Contains(text, "sticky") || strings.Contains(text, "affinity-") {
		t.Errorf("removed service still there:\n%s", text)
	}
	if podMasqueradeRules(t, conn) != 1 {
		t.Errorf("pod-masquerade lost or changed:\n%s", text)
	}
}

// topology is a node namespace routing between pod namespaces, each
// attached by a veth with a /32 address and the node as gateway, so all
// traffic between pods passes the node's nftables.
type topology struct {
	node, pod1, pod2, client ns.NetNS
}

func newTopology(t testing.TB) *topology {
	t.Helper()
	tp := &topology{node: newNS(t), pod1: newNS(t), pod2: newNS(t), client: newNS(t)}
	// Addresses added with nodad are usable at once; the veths' own
	// link-local ones would otherwise be tentative for a second, and the
	// pods could not resolve their gateway.
	for _, n := range []ns.NetNS{tp.node, tp.pod1, tp.pod2, tp.client} {
		must(t, n.Do(func(ns.NetNS) error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0o644)
		}))
	}
	nodeH := nsHandle(t, tp.node)
	gw := netip.MustParsePrefix(nodeGW + "/32")
	gw6 := &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(nodeGW6 + "/64")), Flags: unix.IFA_F_NODAD}
	for i, p := range []struct {
		n           ns.NetNS
		addr, addr6 string
	}{{tp.pod1, pod1, pod1v6}, {tp.pod2, pod2, pod2v6}, {tp.client, client, client6}} {
		hostName := fmt.Sprintf("veth%d", i)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.n.Fd()))}
		if err := nodeH.LinkAdd(veth); err != nil {
			t.Fatalf("add veth %s: %v", hostName, err)
		}
		host, err := nodeH.LinkByName(hostName)
		if err != nil {
			t.Fatal(err)
		}
		must(t, nodeH.AddrAdd(host, &netlink.Addr{IPNet: ipNet(gw)}))
		must(t, nodeH.LinkSetUp(host))
		must(t, nodeH.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.MustParsePrefix(p.addr + "/32")), Scope: netlink.SCOPE_LINK}))
		must(t, nodeH.AddrAdd(host, gw6))
		must(t, nodeH.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.MustParsePrefix(p.addr6 + "/128"))}))

		h := nsHandle(t, p.n)
		lo, err := h.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		must(t, h.LinkSetUp(lo))
		eth, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		must(t, h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(p.addr + "/32"))}))
		must(t, h.LinkSetUp(eth))
		must(t, h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(gw), Scope: netlink.SCOPE_LINK}))
		must(t, h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP(nodeGW)}))
		must(t, h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(p.addr6 + "/128")), Flags: unix.IFA_F_NODAD}))
		must(t, h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: net.ParseIP(nodeGW6)}))
	}
	err := tp.node.Do(func(ns.NetNS) error {
		return errors.Join(os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644),
			os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644))
	})
	must(t, err)
	return tp
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// serve answers each TCP connection with "<local> <peer>", so the client
// learns which backend it reached and the backend's view of its source.
func serve(t *testing.T, n ns.NetNS, addr string) {
	t.Helper()
	nstest.Serve(t, n, addr, func(c net.Conn) string { return fmt.Sprint(c.LocalAddr(), " ", c.RemoteAddr()) })
}

// dial connects from n to addr and returns the backend's line.
func dial(n ns.NetNS, addr string) (string, error) { return nstest.AskLine(n, addr, 3*time.Second) }

func TestApplyPackets(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	conn := nftConn(t, tp.node)
	addPodMasquerade(t, conn)
	if err := NewApplier(int(tp.node.Fd())).Apply(Build(kernelState())); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, addr := range []string{pod1, pod1v6} {
		serve(t, tp.pod1, net.JoinHostPort(addr, "8080"))
	}
	for _, addr := range []string{pod2, pod2v6} {
		serve(t, tp.pod2, net.JoinHostPort(addr, "8080"))
	}

	// web and web6 have a chain of their own (they have a NodePort); plain
	// and plain6 go through the shared pick chain and backend map.
	for _, tc := range []struct {
		name, vip, client, pod1, pod2 string
	}{
		{"clusterIP", svcWeb, client, pod1, pod2},
		{"clusterIP without a chain", svcPlain, client, pod1, pod2},
		{"IPv6 clusterIP", svcWeb6, client6, pod1v6, pod2v6},
		{"IPv6 clusterIP without a chain", svcPlain6, client6, pod1v6, pod2v6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]int{}
			for range 20 {
				line, err := dial(tp.client, net.JoinHostPort(tc.vip, "80"))
				if err != nil {
					t.Fatal(err)
				}
				local, peer, _ := strings.Cut(line, " ")
				if from, err := netip.ParseAddrPort(peer); err != nil || from.Addr() != a(tc.client) {
					t.Errorf("backend saw %s, want the client's own address %s (no masquerade from a pod)", peer, tc.client)
				}
				to, err := netip.ParseAddrPort(local)
				if err != nil {
					t.Fatalf("backend's address %q: %v", local, err)
				}
				seen[to.Addr().String()]++
			}
			if seen[tc.pod1] == 0 || seen[tc.pod2] == 0 || len(seen) != 2 {
				t.Errorf("backends reached %v, want both %s and %s", seen, tc.pod1, tc.pod2)
			}
		})
	}

	t.Run("affinity", func(t *testing.T) {
		first, err := dial(tp.client, svcSticky+":80")
		if err != nil {
			t.Fatal(err)
		}
		backend, _, _ := strings.Cut(first, " ")
		for range 10 {
			line, err := dial(tp.client, svcSticky+":80")
			if err != nil {
				t.Fatal(err)
			}
			if got, _, _ := strings.Cut(line, " "); got != backend {
				t.Fatalf("affinity broken: reached %s after %s", got, backend)
			}
		}
	})

	t.Run("nodePort", func(t *testing.T) {
		line, err := dial(tp.client, nodeGW+":30080")
		if err != nil {
			t.Fatal(err)
		}
		// External traffic is masqueraded to the node's address towards the pod.
		if _, peer, _ := strings.Cut(line, " "); !strings.HasPrefix(peer, nodeGW+":") {
			t.Errorf("backend saw %s, want the node's %s (masquerade)", peer, nodeGW)
		}
	})

	t.Run("no endpoints", func(t *testing.T) {
		start := time.Now()
		_, err := dial(tp.client, svcEmpty+":80")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("got %v, want connection refused", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("refusal took %v", d)
		}
	})

	if n := podMasqueradeRules(t, conn); n != 1 {
		t.Errorf("pod-masquerade has %d rules, want 1", n)
	}
}
