package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// nodad is IFA_F_NODAD as netlink.Addr.Flags wants it.
const nodad = unix.IFA_F_NODAD

// dumpAttempts bounds how often a dump is retried when the kernel flags it as interrupted
// (NLM_F_DUMP_INTR): the table changed while it was being read, so the result may be
// inconsistent, and only a fresh dump can tell.
const dumpAttempts = 5

// dump runs a netlink dump, retrying it while it comes back interrupted.
func dump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpAttempts {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return v, err
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// validIfName mirrors the kernel's dev_valid_name, so a bad name fails before anything is created.
func validIfName(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("invalid interface name %q", name)
	}
	return nil
}

// stableMAC derives a MAC from the first IPv4 address (else the first address), the way
// ovn-kubernetes does: 0a:58 and the last four bytes. A pod or bridge recreated with the same
// address keeps its MAC, so the neighbours' caches stay right.
func stableMAC(addrs []netip.Prefix) net.HardwareAddr {
	ip := addrs[0].Addr()
	for _, p := range addrs {
		if p.Addr().Is4() {
			ip = p.Addr()
			break
		}
	}
	b := ip.As16()
	return net.HardwareAddr{0x0a, 0x58, b[12], b[13], b[14], b[15]}
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func fromIPNet(n *net.IPNet) netip.Prefix {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}

// netlinkAddr is the address as it is added: IPv6 ones without duplicate address detection, so
// they are usable at once instead of staying tentative for a second or more.
func netlinkAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: toIPNet(p)}
	if p.Addr().Is6() {
		a.Flags = nodad
	}
	return a
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func isDefaultRoute(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// defaultDst is the default route's destination in the family of gw; the kernel would take a nil
// destination for IPv4 only.
func defaultDst(gw netip.Addr) *net.IPNet {
	if gw.Is4() {
		return toIPNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	}
	return toIPNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
}

// ensureSysctl sets a sysctl of the calling thread's network namespace: /proc/sys/net resolves
// against the namespace of the thread that opens it. name is the path under /proc/sys, with
// slashes (interface names may contain dots). It reads first so that a value that is already
// right needs no write access (a read-only /proc/sys is then fine).
func ensureSysctl(name, value string) error {
	path := "/proc/sys/" + name
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read sysctl %s: %w", name, err)
	}
	if strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
