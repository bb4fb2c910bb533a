package listen

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nodenet/nodenet/dns/hostnet"
	"github.com/nodenet/nodenet/internal/nstest"
)

// TestOnlyDNSAddresses: on a node with an address of its own, DNS answers on the DNS address
// and nowhere else — `dig @<node address>` gets nothing, the node is no open resolver.
func TestOnlyDNSAddresses(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	nl := nstest.NetlinkHandle(t, node)
	dnsAddr := netip.MustParseAddr("169.254.20.10")
	if _, err := hostnet.EnsureInterface(nl, []netip.Addr{dnsAddr}); err != nil {
		t.Fatal(err)
	}
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	nodeAddr, err := netlink.ParseAddr("198.18.0.1/32")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(lo, nodeAddr); err != nil {
		t.Fatal(err)
	}

	var s *Sockets
	err = node.Do(func(ns.NetNS) error {
		var err error
		s, err = Open(context.Background(), Config{Addrs: []netip.Addr{dnsAddr}, Port: 53, UDPSockets: 2})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, s)

	for _, tc := range []struct {
		to       netip.AddrPort
		answered bool
	}{
		{netip.AddrPortFrom(dnsAddr, 53), true},
		{netip.MustParseAddrPort("198.18.0.1:53"), false},
		{netip.MustParseAddrPort("127.0.0.1:53"), false},
	} {
		err := node.Do(func(ns.NetNS) error { return askBoth(tc.to) })
		switch {
		case tc.answered && err != nil:
			t.Errorf("%s: %v, want an answer", tc.to, err)
		case !tc.answered && !errors.Is(err, syscall.ECONNREFUSED):
			t.Errorf("%s: %v, want connection refused", tc.to, err)
		}
	}
}

// askBoth sends one datagram and one TCP line to to and waits for the echo of each.
func askBoth(to netip.AddrPort) error {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	if _, err := c.Read(make([]byte, 8)); err != nil {
		return err
	}
	tc, err := dialLine(to, "ping")
	if err != nil {
		return err
	}
	defer tc.Close()
	if err := tc.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	_, err = tc.Read(make([]byte, 8))
	return err
}
