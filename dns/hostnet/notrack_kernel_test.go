package hostnet

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netlink"

	"github.com/nodenet/nodenet/internal/nstest"
)

// nft runs the nft command inside n.
func nft(t *testing.T, n ns.NetNS, args ...string) string {
	t.Helper()
	nstest.RequireTool(t, "ip")
	nstest.RequireTool(t, "nft")
	cmd := exec.Command("ip", append([]string{"netns", "exec", filepath.Base(n.Path()), "nft"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// listedChain is a chain as nft lists it, as golden text of our model renders it: the hook line
// stays, so a wrong hook or priority shows.
func listedChain(t *testing.T, n ns.NetNS, name string) string {
	t.Helper()
	var b strings.Builder
	for line := range strings.Lines(nft(t, n, "list", "chain", "inet", tableName, name)) {
		line = strings.TrimSpace(line)
		if line == "" || line == "}" || strings.HasPrefix(line, "table ") {
			continue
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

func wantChains(t *testing.T, n ns.NetNS, addrs []netip.Addr, port uint16) {
	t.Helper()
	want := buildNotrack(addrs, port)
	for _, c := range []struct {
		name, hook string
		rules      []notrackRule
	}{{preroutingChain, "prerouting", want.prerouting}, {outputChain, "output", want.output}} {
		text := fmt.Sprintf("chain %s {\ntype filter hook %s priority raw; policy accept;\n", c.name, c.hook)
		for _, r := range c.rules {
			text += r.String() + "\n"
		}
		if diff := cmp.Diff(text, listedChain(t, n, c.name)); diff != "" {
			t.Errorf("chain %s as nft lists it (-want +got):\n%s", c.name, diff)
		}
	}
}

// addForeign puts a chain and a set of another component into table inet nodenet. The chain's
// ct expression also turns connection tracking on in the namespace, as the proxy's rules do on a
// node; without it no flow would be tracked, notrack or not.
func addForeign(t *testing.T, c *nftables.Conn) {
	t.Helper()
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tableName})
	chain := c.AddChain(&nftables.Chain{
		Name: "other-input", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
	})
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	set := &nftables.Set{Table: table, Name: "other-set", KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(set, []nftables.SetElement{{Key: net.ParseIP("192.0.2.7").To4()}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("add foreign chain and set: %v", err)
	}
}

func ensureNotrack(t *testing.T, c *nftables.Conn, addrs []netip.Addr, port uint16, wantChanged bool) {
	t.Helper()
	changed, err := EnsureNotrack(c, addrs, port)
	if err != nil {
		t.Fatal(err)
	}
	if changed != wantChanged {
		t.Fatalf("EnsureNotrack changed=%v, want %v", changed, wantChanged)
	}
}

// TestEnsureNotrackKernel: the chains are made as nft shows them, left alone when right,
// repaired when changed behind nodenet's back, follow the addresses, and nothing else of the
// table is touched.
func TestEnsureNotrackKernel(t *testing.T) {
	nstest.RequireRoot(t)
	n := nstest.NewNS(t)
	c := nstest.NFTConn(t, n)
	addForeign(t, c)
	foreign := nft(t, n, "list", "chain", "inet", tableName, "other-input") + nft(t, n, "list", "set", "inet", tableName, "other-set")
	first := addrs("169.254.20.10", "fd00::53")

	ensureNotrack(t, c, first, 53, true)
	wantChains(t, n, first, 53)
	ensureNotrack(t, c, first, 53, false)

	nft(t, n, "flush", "chain", "inet", tableName, outputChain)
	ensureNotrack(t, c, first, 53, true)
	wantChains(t, n, first, 53)

	nft(t, n, "flush", "chain", "inet", tableName, preroutingChain)
	nft(t, n, "delete", "chain", "inet", tableName, preroutingChain)
	nft(t, n, "add", "chain", "inet", tableName, preroutingChain, "{ type filter hook prerouting priority 0 ; }")
	ensureNotrack(t, c, first, 53, true)
	wantChains(t, n, first, 53)

	second := addrs("169.254.20.11")
	ensureNotrack(t, c, second, 5353, true)
	wantChains(t, n, second, 5353)

	if got := nft(t, n, "list", "chain", "inet", tableName, "other-input") + nft(t, n, "list", "set", "inet", tableName, "other-set"); got != foreign {
		t.Errorf("foreign chain or set changed (-before +after):\n%s", cmp.Diff(foreign, got))
	}
}

// TestEnsureNotrackNoTable: with no table inet nodenet yet, it is made.
func TestEnsureNotrackNoTable(t *testing.T) {
	nstest.RequireRoot(t)
	n := nstest.NewNS(t)
	a := addrs("169.254.20.10")
	ensureNotrack(t, nstest.NFTConn(t, n), a, 53, true)
	wantChains(t, n, a, 53)
}

// TestNotrackConntrack sends real queries, from a pod namespace through a veth and from the node
// itself, over UDP and TCP, to the DNS address: port 53 leaves no conntrack entry, while the same
// traffic to another port of the address does.
func TestNotrackConntrack(t *testing.T) {
	nstest.RequireRoot(t)
	node, pod := nstest.NewNS(t), nstest.NewNS(t)
	nodeNL, podNL := nstest.NetlinkHandle(t, node), nstest.NetlinkHandle(t, pod)
	dnsAddr := netip.MustParseAddr("169.254.20.10")

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "to-pod"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pod.Fd()))}
	if err := nodeNL.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	addAddr(t, nodeNL, "to-pod", "10.0.0.1/24", 0)
	addAddr(t, podNL, "eth0", "10.0.0.2/24", 0)
	for _, l := range []struct {
		nl   *netlink.Handle
		name string
	}{{nodeNL, "to-pod"}, {podNL, "eth0"}, {podNL, "lo"}} {
		if err := l.nl.LinkSetUp(mustLink(t, l.nl, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := podNL.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: dnsAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}, Gw: net.ParseIP("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}

	if _, err := EnsureInterface(nodeNL, []netip.Addr{dnsAddr}); err != nil {
		t.Fatal(err)
	}
	nftc := nstest.NFTConn(t, node)
	addForeign(t, nftc)
	ensureNotrack(t, nftc, []netip.Addr{dnsAddr}, 53, true)

	for _, port := range []uint16{53, 54} {
		echo(t, node, netip.AddrPortFrom(dnsAddr, port))
	}
	for _, from := range []ns.NetNS{pod, node} {
		for _, port := range []uint16{53, 54} {
			to := netip.AddrPortFrom(dnsAddr, port)
			for _, network := range []string{"udp", "tcp"} {
				if err := ask(from, network, to); err != nil {
					t.Fatalf("%s query to %s: %v", network, to, err)
				}
			}
		}
	}

	ct, err := conntrack.Dial(&mdnetlink.Config{NetNS: int(node.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	flows, err := ct.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range flows {
		o := f.TupleOrig
		if o.IP.DestinationAddress == dnsAddr {
			got = append(got, fmt.Sprintf("proto %d %s -> %s:%d", o.Proto.Protocol, o.IP.SourceAddress, o.IP.DestinationAddress, o.Proto.DestinationPort))
		}
	}
	var tracked53, tracked54 int
	for _, g := range got {
		switch {
		case strings.HasSuffix(g, ":53"):
			tracked53++
		case strings.HasSuffix(g, ":54"):
			tracked54++
		}
	}
	// Port 54: UDP and TCP from the pod and from the node.
	if tracked53 != 0 || tracked54 != 4 {
		t.Errorf("conntrack entries to %s: %d to port 53 (want 0), %d to port 54 (want 4):\n%s", dnsAddr, tracked53, tracked54, strings.Join(got, "\n"))
	}
}

// echo serves UDP and TCP on addr inside n, answering each datagram or line with itself, until
// the test ends.
func echo(t *testing.T, n ns.NetNS, addr netip.AddrPort) {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		if pc, err = net.ListenPacket("udp", addr.String()); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed at cleanup
			}
			// A lost answer fails the asking side.
			_, _ = pc.WriteTo(buf[:k], from)
		}
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			// A failed copy fails the asking side.
			_, _ = io.Copy(c, c)
			c.Close()
		}
	})
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
		wg.Wait()
	})
}

// ask sends one message from inside n to an echo server and checks it comes back.
func ask(n ns.NetNS, network string, to netip.AddrPort) error {
	return n.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout(network, to.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
			return err
		}
		msg := binary.BigEndian.AppendUint16([]byte("query "), to.Port())
		if _, err := c.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if string(got) != string(msg) {
			return fmt.Errorf("answer %q, want %q", got, msg)
		}
		return nil
	})
}
