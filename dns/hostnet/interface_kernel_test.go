package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nstest"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// standIn makes links of a type this kernel has, in place of the dummy type it lacks, so the
// dummy path runs against a real kernel here; only the link type differs from production.
func standIn(name string) netlink.Link {
	return &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}
}

// unknownKind makes links of a type no kernel has: the kernel answers as it does for dummy
// where dummy links are missing.
func unknownKind(name string) netlink.Link {
	return &netlink.GenericLink{LinkAttrs: netlink.LinkAttrs{Name: name}, LinkType: "nodenet-no-such-kind"}
}

// addrState renders the addresses of a link other than the kernel's own (lo's 127.0.0.1 and
// ::1, IPv6 link-local) with what marks them, sorted.
func addrState(t *testing.T, nl *netlink.Handle, name string) []string {
	t.Helper()
	link, err := nl.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	list, err := nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("list addresses of %s: %v", name, err)
	}
	var out []string
	for _, a := range list {
		if a.IP.IsLoopback() || (a.IP.To4() == nil && a.IP.IsLinkLocalUnicast()) {
			continue
		}
		s := a.IPNet.String()
		if a.Label != "" && a.Label != name {
			s += " label " + a.Label
		}
		if a.Flags&unix.IFA_F_NODAD != 0 {
			s += " nodad"
		}
		if a.Flags&unix.IFA_F_NOPREFIXROUTE != 0 {
			s += " noprefixroute"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func isUp(t *testing.T, nl *netlink.Handle, name string) bool {
	t.Helper()
	link, err := nl.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return link.Attrs().Flags&net.FlagUp != 0
}

func addAddr(t *testing.T, nl *netlink.Handle, name, cidr string, flags int) {
	t.Helper()
	link, err := nl.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	a.Flags = flags
	if err := nl.AddrAdd(link, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, name, err)
	}
}

func wantAddrs(t *testing.T, nl *netlink.Handle, name string, want ...string) {
	t.Helper()
	if diff := cmp.Diff(want, addrState(t, nl, name)); diff != "" {
		t.Errorf("addresses of %s (-want +got):\n%s", name, diff)
	}
}

// TestEnsureInterfaceLoopback runs the fallback: the kernel refuses the link type, so the
// addresses go on lo, marked, beside addresses someone else put there, which stay.
func TestEnsureInterfaceLoopback(t *testing.T) {
	nstest.RequireRoot(t)
	nl := nstest.NetlinkHandle(t, nstest.NewNS(t))
	if err := nl.LinkSetUp(mustLink(t, nl, "lo")); err != nil {
		t.Fatal(err)
	}
	// Put there by an administrator: never removed; the second one is wanted and adopted as is.
	addAddr(t, nl, "lo", "192.0.2.1/32", 0)
	addAddr(t, nl, "lo", "169.254.20.11/32", 0)
	addAddr(t, nl, "lo", "2001:db8::1/128", unix.IFA_F_NODAD)
	admin := []string{"169.254.20.11/32", "192.0.2.1/32", "2001:db8::1/128 nodad"}

	steps := []struct {
		addrs []netip.Addr
		want  []string
	}{
		{addrs("169.254.20.10", "fd00::53"), []string{"169.254.20.10/32 label lo:nodenet-dns", "fd00::53/128 nodad noprefixroute"}},
		// Again: nothing changes.
		{addrs("169.254.20.10", "fd00::53"), []string{"169.254.20.10/32 label lo:nodenet-dns", "fd00::53/128 nodad noprefixroute"}},
		// Stale marked addresses go; the administrator's, wanted or not, stay.
		{addrs("169.254.20.12", "169.254.20.11"), []string{"169.254.20.12/32 label lo:nodenet-dns"}},
		{addrs("fd00::54"), []string{"fd00::54/128 nodad noprefixroute"}},
	}
	for i, s := range steps {
		mode, err := ensureInterface(nl, s.addrs, unknownKind)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if mode != ModeLoopback {
			t.Fatalf("step %d: mode %v, want loopback", i, mode)
		}
		want := slices.Sorted(slices.Values(append(slices.Clone(admin), s.want...)))
		wantAddrs(t, nl, "lo", want...)
		if _, err := nl.LinkByName(InterfaceName); err == nil {
			t.Fatalf("step %d: %s exists after a refused link type", i, InterfaceName)
		}
	}
}

// TestEnsureInterfaceBringsLoopbackUp: a fresh namespace's lo is down; the addresses on it would
// be unreachable.
func TestEnsureInterfaceBringsLoopbackUp(t *testing.T) {
	nstest.RequireRoot(t)
	nl := nstest.NetlinkHandle(t, nstest.NewNS(t))
	if _, err := ensureInterface(nl, addrs("169.254.20.10"), unknownKind); err != nil {
		t.Fatal(err)
	}
	if !isUp(t, nl, "lo") {
		t.Error("lo is down")
	}
}

// TestEnsureInterfaceOwnLink runs the dummy path with a stand-in link type: the link is made and
// brought up, holds exactly the wanted addresses, and the addresses an earlier fallback left on
// lo go once the link has them.
func TestEnsureInterfaceOwnLink(t *testing.T) {
	nstest.RequireRoot(t)
	nl := nstest.NetlinkHandle(t, nstest.NewNS(t))
	if _, err := ensureInterface(nl, addrs("169.254.20.10", "fd00::53"), unknownKind); err != nil {
		t.Fatal(err)
	}
	addAddr(t, nl, "lo", "192.0.2.1/32", 0)

	steps := []struct {
		addrs []netip.Addr
		want  []string
	}{
		{addrs("169.254.20.10", "fd00::53"), []string{"169.254.20.10/32", "fd00::53/128 nodad"}},
		{addrs("169.254.20.10", "fd00::53"), []string{"169.254.20.10/32", "fd00::53/128 nodad"}},
		{addrs("169.254.20.11"), []string{"169.254.20.11/32"}},
		{addrs("fd00::54", "169.254.20.11"), []string{"169.254.20.11/32", "fd00::54/128 nodad"}},
	}
	for i, s := range steps {
		mode, err := ensureInterface(nl, s.addrs, standIn)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if mode != ModeDummy {
			t.Fatalf("step %d: mode %v, want dummy", i, mode)
		}
		wantAddrs(t, nl, InterfaceName, s.want...)
		wantAddrs(t, nl, "lo", "192.0.2.1/32")
		if !isUp(t, nl, InterfaceName) {
			t.Fatalf("step %d: %s is down", i, InterfaceName)
		}
	}
}

// TestEnsureInterfaceOwnLinkStale: an address of another prefix length on nodenet's link is
// replaced by the host prefix, for IPv6 too, where the kernel refuses the same address twice.
func TestEnsureInterfaceOwnLinkStale(t *testing.T) {
	nstest.RequireRoot(t)
	nl := nstest.NetlinkHandle(t, nstest.NewNS(t))
	if err := nl.LinkAdd(standIn(InterfaceName)); err != nil {
		t.Fatal(err)
	}
	addAddr(t, nl, InterfaceName, "169.254.20.10/16", 0)
	addAddr(t, nl, InterfaceName, "fd00::53/64", unix.IFA_F_NODAD)
	if _, err := ensureInterface(nl, addrs("169.254.20.10", "fd00::53"), standIn); err != nil {
		t.Fatal(err)
	}
	wantAddrs(t, nl, InterfaceName, "169.254.20.10/32", "fd00::53/128 nodad")
}

// TestEnsureInterfaceErrors: only a refused link type leads to the fallback; any other failure,
// and a link of nodenet's name but another type, is an error and changes nothing on lo.
func TestEnsureInterfaceErrors(t *testing.T) {
	nstest.RequireRoot(t)
	t.Run("other failure", func(t *testing.T) {
		nl := nstest.NetlinkHandle(t, nstest.NewNS(t))
		tooBig := func(name string) netlink.Link {
			return &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: -1, NumTxQueues: 1 << 20}}
		}
		_, err := ensureInterface(nl, addrs("169.254.20.10"), tooBig)
		if err == nil || errors.Is(err, unix.EOPNOTSUPP) {
			t.Fatalf("got %v, want an error other than EOPNOTSUPP", err)
		}
		if !strings.Contains(err.Error(), "add ifb link "+InterfaceName) {
			t.Errorf("error %q does not name the link", err)
		}
		wantAddrs(t, nl, "lo")
	})
	t.Run("name taken", func(t *testing.T) {
		nl := nstest.NetlinkHandle(t, nstest.NewNS(t))
		if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: InterfaceName}}); err != nil {
			t.Fatal(err)
		}
		_, err := ensureInterface(nl, addrs("169.254.20.10"), standIn)
		want := fmt.Sprintf("link %s exists with type bridge, want ifb", InterfaceName)
		if err == nil || err.Error() != want {
			t.Fatalf("got %v, want %q", err, want)
		}
	})
}

// TestEnsureInterface runs the production function: on a kernel with dummy links the addresses
// are on nodenet-dns, elsewhere (this one) on lo.
func TestEnsureInterface(t *testing.T) {
	nstest.RequireRoot(t)
	nl := nstest.NetlinkHandle(t, nstest.NewNS(t))
	mode, err := EnsureInterface(nl, addrs("169.254.20.10"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mode %v", mode)
	switch mode {
	case ModeDummy:
		wantAddrs(t, nl, InterfaceName, "169.254.20.10/32")
		if l := mustLink(t, nl, InterfaceName); l.Type() != "dummy" {
			t.Errorf("%s has type %s", InterfaceName, l.Type())
		}
	case ModeLoopback:
		wantAddrs(t, nl, "lo", "169.254.20.10/32 label lo:nodenet-dns")
	default:
		t.Fatalf("mode %v", mode)
	}
}

func mustLink(t *testing.T, nl *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := nl.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return l
}
