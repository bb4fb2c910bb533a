package routing

import (
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

func TestNewLocalValidates(t *testing.T) {
	h := &netlink.Handle{}
	nft := &nftables.Conn{}
	for _, tc := range []struct {
		name string
		edit func(*LocalConfig)
	}{
		{"no gateway", func(c *LocalConfig) { c.Gateways = nil }},
		{"gateway is a network address", func(c *LocalConfig) { c.Gateways = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")} }},
		{"bridge name too long", func(c *LocalConfig) { c.Bridge = "nodenet0123456789" }},
		{"bridge name empty", func(c *LocalConfig) { c.Bridge = "" }},
		{"negative mtu", func(c *LocalConfig) { c.MTU = -1 }},
		{"invalid pod CIDR", func(c *LocalConfig) { c.PodCIDRs = []netip.Prefix{{}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := dualStack
			tc.edit(&cfg)
			if _, err := NewLocal(cfg, h, nft, nil); err == nil {
				t.Error("NewLocal accepted a bad config")
			}
		})
	}
	if _, err := NewLocal(dualStack, nil, nft, nil); err == nil {
		t.Error("NewLocal accepted a nil netlink handle")
	}
}

func TestEnsureCreates(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	br := nd.ensure(t, l)

	link, err := nd.nl.LinkByName("nodenet0")
	if err != nil {
		t.Fatalf("bridge not created: %v", err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		t.Errorf("nodenet0 is a %s", link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Error("bridge is down")
	}
	want := Bridge{
		Name:     "nodenet0",
		Index:    link.Attrs().Index,
		MAC:      net.HardwareAddr{0x0a, 0x58, 10, 244, 1, 1},
		MTU:      1500, // no default route in the node: the fallback
		Gateways: dualStack.Gateways,
	}
	if diff := cmp.Diff(want, br, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("Ensure result (-want +got):\n%s", diff)
	}
	for _, g := range dualStack.Gateways {
		if isTentative(addrFlags(t, nd.nl, "nodenet0", g)) {
			t.Errorf("gateway %s is tentative: added without IFA_F_NODAD", g)
		}
	}
	if v := sysctl(t, nd.ns, "net/ipv4/ip_forward"); v != "1" {
		t.Errorf("ip_forward = %s", v)
	}
	if v := sysctl(t, nd.ns, "net/ipv6/conf/all/forwarding"); v != "1" {
		t.Errorf("ipv6 forwarding = %s", v)
	}

	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	chain, err := nd.nft.ListChain(table, masqChain)
	if err != nil {
		t.Fatalf("chain %s: %v", masqChain, err)
	}
	if chain.Type != nftables.ChainTypeNAT || *chain.Hooknum != *nftables.ChainHookPostrouting ||
		*chain.Priority != *nftables.ChainPriorityNATSource {
		t.Errorf("chain is type %s hook %d priority %d, want nat postrouting srcnat",
			chain.Type, *chain.Hooknum, *chain.Priority)
	}
	rules, err := nd.nft.GetRules(table, chain)
	if err != nil {
		t.Fatal(err)
	}
	var got, wantExprs [][]expr.Any
	for _, r := range rules {
		got = append(got, r.Exprs)
	}
	for _, r := range masqueradeRules(dualStack.Bridge, dualStack.PodCIDRs, dualStack.ClusterCIDRs) {
		wantExprs = append(wantExprs, r.exprs())
	}
	if diff := cmp.Diff(wantExprs, got); diff != "" {
		t.Errorf("rules read back from the kernel (-want +got):\n%s", diff)
	}
}

// TestEnsureRulesAsNftListsThem checks that the rules in the kernel mean what the model says, by
// comparing nft's own rendering with the model's golden text.
func TestEnsureRulesAsNftListsThem(t *testing.T) {
	requireRoot(t)
	nft := requireTool(t, "nft")
	nd := newNode(t)
	nd.ensure(t, nd.local(t, dualStack))

	out := inNS(t, nd.ns, nft, "list", "chain", "inet", tableName, masqChain)
	var got []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasSuffix(line, " return") || strings.HasSuffix(line, " masquerade") {
			got = append(got, line)
		}
	}
	var want []string
	for _, r := range masqueradeRules(dualStack.Bridge, dualStack.PodCIDRs, dualStack.ClusterCIDRs) {
		want = append(want, r.String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nft list (-model +nft):\n%s\nfull listing:\n%s", diff, out)
	}
	if !regexp.MustCompile(`type nat hook postrouting priority srcnat`).MatchString(out) {
		t.Errorf("chain header not as wanted:\n%s", out)
	}
}

// nftTransactions counts the nftables transactions committed in the node while f runs. A
// sentinel transaction after f marks the end of f's, so nothing has to wait on a timer.
func nftTransactions(t *testing.T, nd *node, f func()) int {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(int(nd.ns.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
	events, err := conn.AddGenerationalMonitor(mon)
	if err != nil {
		t.Fatalf("nft monitor: %v", err)
	}
	defer func() {
		mon.Close()
		for range events { // let the monitor goroutine finish
		}
	}()

	f()

	sentinel := &nftables.Table{Family: nftables.TableFamilyINet, Name: "sentinel"}
	nd.nft.AddTable(sentinel)
	nd.nft.DelTable(sentinel)
	if err := nd.nft.Flush(); err != nil {
		t.Fatalf("sentinel transaction: %v", err)
	}
	n := 0
	for ev := range events {
		if ev.GeneratedBy.Error != nil {
			t.Fatalf("nft monitor: %v", ev.GeneratedBy.Error)
		}
		for _, c := range ev.Changes {
			if tb, ok := c.Data.(*nftables.Table); ok && tb.Name == "sentinel" {
				return n
			}
		}
		n++
	}
	t.Fatal("nft monitor closed before the sentinel")
	return 0
}

type linkState struct {
	Index int
	MAC   string
	MTU   int
	Addrs []string
}

func bridgeState(t *testing.T, h *netlink.Handle) linkState {
	t.Helper()
	link, err := h.LinkByName("nodenet0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	s := linkState{Index: link.Attrs().Index, MAC: link.Attrs().HardwareAddr.String(), MTU: link.Attrs().MTU}
	for _, a := range addrs {
		s.Addrs = append(s.Addrs, a.IPNet.String())
	}
	slices.Sort(s.Addrs)
	return s
}

func TestEnsureTwiceChangesNothing(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	l := nd.local(t, dualStack)
	var first Bridge
	// The first Ensure shows that the count sees a transaction when there is one.
	if n := nftTransactions(t, nd, func() { first = nd.ensure(t, l) }); n != 1 {
		t.Errorf("first Ensure committed %d nft transactions, want 1", n)
	}
	before := bridgeState(t, nd.nl)

	var second Bridge
	if n := nftTransactions(t, nd, func() { second = nd.ensure(t, l) }); n != 0 {
		t.Errorf("second Ensure committed %d nft transactions, want 0", n)
	}
	if diff := cmp.Diff(first, second, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("second Ensure result differs (-first +second):\n%s", diff)
	}
	if diff := cmp.Diff(before, bridgeState(t, nd.nl)); diff != "" {
		t.Errorf("bridge changed (-before +after):\n%s", diff)
	}
}

// addPort puts one end of a new veth pair on the bridge, with the given MAC.
func addPort(t *testing.T, h *netlink.Handle, name string, mac net.HardwareAddr, bridge string) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.HardwareAddr = mac
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: name + "p", PeerTxQLen: -1}
	if err := h.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	br, err := h.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetMaster(v, br); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(v); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureAdoptsOnRestart(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	first := nd.ensure(t, nd.local(t, dualStack))

	// A port whose MAC sorts below the bridge's would take over an unpinned bridge's MAC.
	addPort(t, nd.nl, "low0", net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, "nodenet0")
	if got := bridgeState(t, nd.nl).MAC; got != first.MAC.String() {
		t.Fatalf("bridge MAC followed its port: %s, want %s", got, first.MAC)
	}

	// A new Local is what a restarted daemon builds.
	restarted := nd.local(t, dualStack)
	var again Bridge
	if n := nftTransactions(t, nd, func() { again = nd.ensure(t, restarted) }); n != 0 {
		t.Errorf("Ensure after restart committed %d nft transactions, want 0", n)
	}
	if again.Index != first.Index || again.MAC.String() != first.MAC.String() {
		t.Errorf("after restart bridge is index %d MAC %s, want index %d MAC %s",
			again.Index, again.MAC, first.Index, first.MAC)
	}
}

func TestEnsurePinsForeignBridgeMAC(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	// A bridge made by someone else, without a MAC of its own: it follows its port.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "nodenet0"
	if err := nd.nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	portMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x50}
	addPort(t, nd.nl, "p0", portMAC, "nodenet0")
	if got := bridgeState(t, nd.nl).MAC; got != portMAC.String() {
		t.Fatalf("precondition: bridge MAC %s, want its port's %s", got, portMAC)
	}
	index := bridgeState(t, nd.nl).Index

	br := nd.ensure(t, nd.local(t, dualStack))
	if br.Index != index || br.MAC.String() != portMAC.String() {
		t.Errorf("Ensure changed the bridge: index %d MAC %s, want %d %s", br.Index, br.MAC, index, portMAC)
	}
	addPort(t, nd.nl, "p1", net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, "nodenet0")
	if got := bridgeState(t, nd.nl).MAC; got != portMAC.String() {
		t.Errorf("bridge MAC still follows its ports: %s, want %s", got, portMAC)
	}
}

func TestEnsureMovesToNewPodCIDR(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	nd.ensure(t, nd.local(t, dualStack))

	br, err := nd.nl.LinkByName("nodenet0")
	if err != nil {
		t.Fatal(err)
	}
	// Another component's address on the bridge, and its chain in our table.
	foreign := netip.MustParsePrefix("169.254.20.10/32")
	if err := nd.nl.AddrAdd(br, &netlink.Addr{IPNet: toIPNet(foreign)}); err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	other := nd.nft.AddChain(&nftables.Chain{Name: "services", Table: table})
	nd.nft.AddRule(&nftables.Rule{Table: table, Chain: other, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
	if err := nd.nft.Flush(); err != nil {
		t.Fatal(err)
	}

	moved := LocalConfig{
		Bridge:       "nodenet0",
		Gateways:     []netip.Prefix{netip.MustParsePrefix("10.244.5.1/24"), netip.MustParsePrefix("fd00:10:244:5::1/64")},
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.5.0/24"), netip.MustParsePrefix("fd00:10:244:5::/64")},
		ClusterCIDRs: dualStack.ClusterCIDRs,
	}
	nd.ensure(t, nd.local(t, moved))

	var global []string
	for _, a := range bridgeState(t, nd.nl).Addrs {
		if !strings.HasPrefix(a, "fe80:") {
			global = append(global, a)
		}
	}
	want := []string{"10.244.5.1/24", "169.254.20.10/32", "fd00:10:244:5::1/64"}
	if diff := cmp.Diff(want, global); diff != "" {
		t.Errorf("bridge addresses (-want +got):\n%s", diff)
	}
	if rules, err := nd.nft.GetRules(table, other); err != nil || len(rules) != 1 {
		t.Errorf("other chain's rules: %d, %v; want it kept with its rule", len(rules), err)
	}
	rules, err := nd.nft.GetRules(table, &nftables.Chain{Name: masqChain, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	var wantRules [][]expr.Any
	for _, r := range masqueradeRules(moved.Bridge, moved.PodCIDRs, moved.ClusterCIDRs) {
		wantRules = append(wantRules, r.exprs())
	}
	if !sameRules(rules, wantRules) {
		t.Error("masquerade rules not moved to the new pod CIDR")
	}
}

func TestEnsureReplacesChainWithWrongHook(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	table := nd.nft.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tableName})
	nd.nft.AddChain(&nftables.Chain{
		Name: masqChain, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
	})
	if err := nd.nft.Flush(); err != nil {
		t.Fatal(err)
	}
	nd.ensure(t, nd.local(t, dualStack))
	chain, err := nd.nft.ListChain(table, masqChain)
	if err != nil {
		t.Fatal(err)
	}
	if chain.Type != nftables.ChainTypeNAT || *chain.Hooknum != *nftables.ChainHookPostrouting {
		t.Errorf("chain is %s hook %d, want nat postrouting", chain.Type, *chain.Hooknum)
	}
}

// uplink connects node to a new outside namespace: node 198.18.0.2/24 on "up0", outside
// 198.18.0.100/24 on "eth0", and the node's default route via the outside.
func uplink(t *testing.T, nd *node, mtu int) ns.NetNS {
	t.Helper()
	outside := newNS(t)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "up0"
	attrs.MTU = mtu
	attrs.Flags = net.FlagUp
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(outside.Fd())), PeerTxQLen: -1}
	if err := nd.nl.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	if err := nd.nl.AddrAdd(v, &netlink.Addr{IPNet: toIPNet(netip.MustParsePrefix("198.18.0.2/24"))}); err != nil {
		t.Fatal(err)
	}
	if err := nd.nl.RouteAdd(&netlink.Route{
		LinkIndex: v.Index, Dst: defaultDst(netip.IPv4Unspecified()), Gw: net.ParseIP("198.18.0.100"),
	}); err != nil {
		t.Fatal(err)
	}
	oh := nsHandle(t, outside)
	for _, name := range []string{"eth0", "lo"} {
		link, err := oh.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "eth0" {
			if err := oh.AddrAdd(link, &netlink.Addr{IPNet: toIPNet(netip.MustParsePrefix("198.18.0.100/24"))}); err != nil {
				t.Fatal(err)
			}
		}
		if err := oh.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	return outside
}

func TestEnsureMTU(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	uplink(t, nd, 1400)
	if br := nd.ensure(t, nd.local(t, dualStack)); br.MTU != 1400 {
		t.Errorf("bridge MTU %d, want the uplink's 1400", br.MTU)
	}
	cfg := dualStack
	cfg.MTU = 1350
	if br := nd.ensure(t, nd.local(t, cfg)); br.MTU != 1350 {
		t.Errorf("bridge MTU %d, want the configured 1350", br.MTU)
	}
}

func TestEnsureRefusesNonBridge(t *testing.T) {
	requireRoot(t)
	nd := newNode(t)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "nodenet0"
	if err := nd.nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "other0", PeerTxQLen: -1}); err != nil {
		t.Fatal(err)
	}
	l := nd.local(t, dualStack)
	err := nd.ns.Do(func(ns.NetNS) error {
		_, err := l.Ensure()
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("Ensure on a veth named like the bridge: %v, want a not-a-bridge error", err)
	}
}
