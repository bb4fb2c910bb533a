package healthcheck_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"

	"github.com/nodenet/nodenet/internal/nstest"
	"github.com/nodenet/nodenet/proxy"
	"github.com/nodenet/nodenet/proxy/healthcheck"
)

// Addresses on the test underlay (RFC 2544): a node and the load balancer probing it.
var (
	nodeAddr = netip.MustParsePrefix("198.18.0.1/24")
	lbAddr   = netip.MustParsePrefix("198.18.0.2/24")
)

// A fresh namespace has every port free, so the port can be fixed.
const nsPort = 32000

// newNodeAndLB returns a node namespace and a load balancer namespace joined by a veth pair,
// with loopback up in both.
func newNodeAndLB(t *testing.T) (node, lb ns.NetNS) {
	t.Helper()
	node, lb = nstest.NewNS(t), nstest.NewNS(t)
	nodeH, lbH := nstest.NetlinkHandle(t, node), nstest.NetlinkHandle(t, lb)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(lb.Fd()))}
	if err := nodeH.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		addr netip.Prefix
	}{{nodeH, nodeAddr}, {lbH, lbAddr}} {
		for _, name := range []string{"lo", "eth0"} {
			link, err := side.h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if name == "eth0" {
				ipNet := &net.IPNet{IP: side.addr.Addr().AsSlice(), Mask: net.CIDRMask(side.addr.Bits(), 32)}
				if err := side.h.AddrAdd(link, &netlink.Addr{IPNet: ipNet}); err != nil {
					t.Fatalf("add %s: %v", side.addr, err)
				}
			}
			if err := side.h.LinkSetUp(link); err != nil {
				t.Fatalf("set %s up: %v", name, err)
			}
		}
	}
	return node, lb
}

// dialIn dials from inside n.
func dialIn(n ns.NetNS) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func(ns.NetNS) error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// listenIn opens listeners inside n, as the daemon does in its own namespace.
func listenIn(n ns.NetNS) func(network, addr string) (net.Listener, error) {
	return func(network, addr string) (net.Listener, error) {
		var ln net.Listener
		err := n.Do(func(ns.NetNS) error {
			var err error
			ln, err = net.Listen(network, addr)
			return err
		})
		return ln, err
	}
}

// The server in a node namespace answers a load balancer's probe over a real link, on the node
// address only or on every address.
func TestNamespace(t *testing.T) {
	nstest.RequireRoot(t)
	node, lb := newNodeAndLB(t)
	want := answer("200 OK", svcA, 2, true)
	url := func(addr string) string { return fmt.Sprintf("http://%s/", net.JoinHostPort(addr, fmt.Sprint(nsPort))) }

	nodeIP := nodeAddr.Addr().String()
	type probe struct {
		fromLB   bool // from the load balancer's namespace, else from inside the node
		addr     string
		answered bool
	}
	for _, tc := range []struct {
		name   string
		addrs  []netip.Addr
		probes []probe
	}{
		{"node address", []netip.Addr{nodeAddr.Addr()}, []probe{{true, nodeIP, true}, {false, nodeIP, true}, {false, "127.0.0.1", false}}},
		{"every address", nil, []probe{{true, nodeIP, true}, {false, nodeIP, true}, {false, "127.0.0.1", true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := healthcheck.New(zaptest.NewLogger(t), tc.addrs, healthcheck.WithListen(listenIn(node)))
			defer s.Close()
			s.SyncServices(map[proxy.ServiceKey]int32{svcA: nsPort})
			s.SyncEndpoints(map[proxy.ServiceKey]int{svcA: 2})

			for _, p := range tc.probes {
				from := node
				if p.fromLB {
					from = lb
				}
				got, err := fetch(dialIn(from), http.MethodGet, url(p.addr))
				switch {
				case !p.answered && err == nil:
					t.Errorf("GET %s (from LB: %t) answered; want refused", url(p.addr), p.fromLB)
				case p.answered && err != nil:
					t.Errorf("GET %s (from LB: %t): %v", url(p.addr), p.fromLB, err)
				case p.answered:
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("GET %s (from LB: %t) (-want +got):\n%s", url(p.addr), p.fromLB, diff)
					}
				}
			}

			s.Close()
			if _, err := fetch(dialIn(lb), http.MethodGet, url(nodeIP)); err == nil {
				t.Errorf("GET after Close answered; want refused")
			}
		})
	}
}
