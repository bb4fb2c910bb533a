package routing

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Kernel test helpers shared with the proxy tests.
var (
	requireRoot = nstest.RequireRoot
	requireTool = nstest.RequireTool
	newNS       = nstest.NewNS
	nsHandle    = nstest.NetlinkHandle
)

// node is a simulated node: its namespace with the handles a daemon inside it would use.
type node struct {
	ns  ns.NetNS
	nl  *netlink.Handle
	nft *nftables.Conn
}

func newNode(t *testing.T) *node {
	t.Helper()
	n := newNS(t)
	nft, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatalf("nftables conn: %v", err)
	}
	return &node{ns: n, nl: nsHandle(t, n), nft: nft}
}

func (n *node) local(t *testing.T, cfg LocalConfig) *Local {
	t.Helper()
	// As the daemon does: pod methods get netlink sockets of their own in the node's namespace.
	cfg.NodeNetns = n.ns.Path()
	l, err := NewLocal(cfg, n.nl, n.nft, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("NewLocal: %v", err)
	}
	return l
}

// ensure runs Ensure inside the node's namespace, as the daemon does.
func (n *node) ensure(t *testing.T, l *Local) Bridge {
	t.Helper()
	var br Bridge
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		br, err = l.Ensure()
		return err
	})
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return br
}

// sysctl reads a sysctl in n.
func sysctl(t *testing.T, n ns.NetNS, name string) string {
	t.Helper()
	var v []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		v, err = os.ReadFile("/proc/sys/" + name)
		return err
	})
	if err != nil {
		t.Fatalf("read sysctl %s: %v", name, err)
	}
	return strings.TrimSpace(string(v))
}

// inNS runs a command inside n, the child inheriting the namespace of the locked thread.
func inNS(t *testing.T, n ns.NetNS, name string, args ...string) string {
	t.Helper()
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var dualStack = LocalConfig{
	Bridge:       "nodenet0",
	Gateways:     []netip.Prefix{netip.MustParsePrefix("10.244.1.1/24"), netip.MustParsePrefix("fd00:10:244:1::1/64")},
	PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
	ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
}

// pod is a pod namespace attached to a node.
type pod struct {
	ns  ns.NetNS
	net PodNetwork
	ifs PodInterfaces
}

func podNetwork(netnsPath, id string, ips ...string) PodNetwork {
	p := PodNetwork{NetnsPath: netnsPath, IfName: "eth0", HostVeth: HostVethName(id, "eth0")}
	for _, ip := range ips {
		pfx := netip.MustParsePrefix(ip)
		p.IPs = append(p.IPs, pfx)
		gw := dualStack.Gateways[0]
		if pfx.Addr().Is6() {
			gw = dualStack.Gateways[1]
		}
		p.Gateways = append(p.Gateways, gw)
	}
	return p
}

func attach(t *testing.T, l *Local, id string, ips ...string) *pod {
	t.Helper()
	n := newNS(t)
	p := &pod{ns: n, net: podNetwork(n.Path(), id, ips...)}
	ifs, err := l.AttachPod(p.net)
	if err != nil {
		t.Fatalf("AttachPod %s: %v", id, err)
	}
	p.ifs = ifs
	return p
}

// server accepts TCP connections inside a namespace and answers each with the peer address it
// sees, which is how the tests observe NAT. It stops when the test ends.
type server struct{ ln net.Listener }

func listen(t *testing.T, n ns.NetNS, addr string) *server {
	t.Helper()
	return &server{ln: nstest.Serve(t, n, addr, func(c net.Conn) string { return c.RemoteAddr().String() })}
}

// port is the server's port, for dialing it at another address of its namespace.
func (s *server) port() string {
	_, port, _ := net.SplitHostPort(s.ln.Addr().String())
	return port
}

// peerSeen connects from inside n to addr and returns the source address the server saw.
func peerSeen(n ns.NetNS, addr string) (netip.Addr, error) {
	line, err := nstest.AskLine(n, addr, 5*time.Second)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("connect to %s: %w", addr, err)
	}
	ap, err := netip.ParseAddrPort(line)
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}

func mustPeerSeen(t *testing.T, n ns.NetNS, addr string) netip.Addr {
	t.Helper()
	a, err := peerSeen(n, addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// linkExists reports whether a link is there, failing the test on other errors.
func linkExists(t *testing.T, h *netlink.Handle, name string) bool {
	t.Helper()
	_, err := h.LinkByName(name)
	if isNotFound(err) {
		return false
	}
	if err != nil {
		t.Fatalf("get link %s: %v", name, err)
	}
	return true
}

// addrFlags returns the flags of addr on the link, failing when it is not there.
func addrFlags(t *testing.T, h *netlink.Handle, link string, addr netip.Prefix) int {
	t.Helper()
	l, err := h.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if fromIPNet(a.IPNet) == addr {
			return a.Flags
		}
	}
	t.Fatalf("address %s not on %s (have %v)", addr, link, addrs)
	return 0
}

func isTentative(flags int) bool { return flags&unix.IFA_F_TENTATIVE != 0 }
