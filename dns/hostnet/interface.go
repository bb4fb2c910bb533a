// Package hostnet puts the node-local DNS addresses on the node and keeps connection tracking off
// their traffic: the nodenet-dns dummy interface (or, where the kernel has no dummy links, the
// addresses on lo marked as nodenet's) and the notrack chains in table inet nodenet. Both are
// reconciled: each call brings the kernel to the wanted state, adopts what is already right and
// touches nothing it does not own.
package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// InterfaceName is the dummy interface that carries the DNS addresses (public contract).
const InterfaceName = "nodenet-dns"

// Mode says where EnsureInterface put the addresses.
type Mode int

const (
	// ModeDummy: on the nodenet-dns dummy interface, which nodenet owns whole.
	ModeDummy Mode = iota + 1
	// ModeLoopback: on lo, marked as nodenet's, because the kernel cannot create dummy links.
	ModeLoopback
)

func (m Mode) String() string {
	switch m {
	case ModeDummy:
		return "dummy"
	case ModeLoopback:
		return "loopback"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// loopbackLabel marks nodenet's IPv4 addresses on lo; `ip addr` shows it. The kernel caps labels
// at 15 bytes and by convention they start with the device's name.
const loopbackLabel = "lo:" + InterfaceName

// loopbackV6Flags mark nodenet's IPv6 addresses on lo. IPv6 keeps no label, and the address
// protocol attribute (IFA_PROTO) that would be the right marker can be neither set nor read
// through the netlink library, so the marker is a pair of flags that lo addresses made by hand
// do not carry: nodad (no duplicate detection on a local-only address) and noprefixroute (a
// /128 needs no prefix route; the local route that delivers the packets is added regardless).
const loopbackV6Flags = unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE

// EnsureInterface puts addrs, as /32 and /128, on the nodenet-dns dummy interface (created and
// brought up when missing) and removes every other address nodenet put there or on lo. Where the
// kernel cannot create dummy links it puts them on lo instead, marked as nodenet's, and removes
// only marked addresses; an address someone else already put on lo is used as it is. It is
// idempotent and sends nothing when everything is in place.
func EnsureInterface(nl *netlink.Handle, addrs []netip.Addr) (Mode, error) {
	return ensureInterface(nl, addrs, func(name string) netlink.Link {
		return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}
	})
}

// ensureInterface is EnsureInterface with the link type made by newLink: tests stand in a type
// this kernel has for the dummy type it lacks.
func ensureInterface(nl *netlink.Handle, addrs []netip.Addr, newLink func(name string) netlink.Link) (Mode, error) {
	if err := validateAddrs(addrs); err != nil {
		return 0, err
	}
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return 0, fmt.Errorf("find lo: %w", err)
	}
	link, err := ensureLink(nl, newLink(InterfaceName))
	if errors.Is(err, unix.EOPNOTSUPP) {
		// The kernel knows no such link type and could not load it: "Unknown device type".
		if err := ensureUp(nl, lo); err != nil {
			return 0, err
		}
		if err := ensureAddrs(nl, lo, addrs, ownedOnLoopback, markLoopback); err != nil {
			return 0, err
		}
		return ModeLoopback, nil
	}
	if err != nil {
		return 0, err
	}
	if err := ensureAddrs(nl, link, addrs, ownedOnDummy, markDummy); err != nil {
		return 0, err
	}
	// Addresses left on lo by a fallback of an earlier start go only once the dummy has them.
	if err := ensureAddrs(nl, lo, nil, ownedOnLoopback, markLoopback); err != nil {
		return 0, err
	}
	return ModeDummy, nil
}

func validateAddrs(addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return errors.New("no DNS listen address given")
	}
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		switch {
		case !a.IsValid():
			return errors.New("invalid DNS listen address (zero value)")
		case a.Zone() != "":
			return fmt.Errorf("DNS listen address %s: zones are not allowed", a)
		case a.Is4In6():
			return fmt.Errorf("DNS listen address %s: use the IPv4 form %s", a, a.Unmap())
		case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback():
			return fmt.Errorf("DNS listen address %s: must be a unicast, non-loopback address", a)
		case a.Is6() && a.IsLinkLocalUnicast():
			return fmt.Errorf("DNS listen address %s: IPv6 link-local addresses need a zone", a)
		case seen[a]:
			return fmt.Errorf("DNS listen address %s given twice", a)
		}
		seen[a] = true
	}
	return nil
}

// ensureLink finds or creates the link want describes and brings it up. A link of that name and
// another type is an error: nodenet does not take over what it did not make.
func ensureLink(nl *netlink.Handle, want netlink.Link) (netlink.Link, error) {
	name := want.Attrs().Name
	link, err := nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		if err := nl.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("add %s link %s: %w", want.Type(), name, err)
		}
		if link, err = nl.LinkByName(name); err != nil {
			return nil, fmt.Errorf("find %s after adding it: %w", name, err)
		}
	case err != nil:
		return nil, fmt.Errorf("find %s: %w", name, err)
	case link.Type() != want.Type():
		return nil, fmt.Errorf("link %s exists with type %s, want %s", name, link.Type(), want.Type())
	}
	return link, ensureUp(nl, link)
}

func ensureUp(nl *netlink.Handle, link netlink.Link) error {
	if link.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
	}
	return nil
}

// ownedOnDummy: every address on the dummy is nodenet's, except the IPv6 link-local address
// the kernel gives any link that comes up.
func ownedOnDummy(a netlink.Addr) bool {
	return !(a.IP.To4() == nil && a.IP.IsLinkLocalUnicast())
}

func ownedOnLoopback(a netlink.Addr) bool {
	if a.IP.To4() != nil {
		return a.Label == loopbackLabel
	}
	return a.Flags&loopbackV6Flags == loopbackV6Flags
}

func markDummy(a *netlink.Addr) {
	if a.IP.To4() == nil {
		a.Flags = unix.IFA_F_NODAD
	}
}

func markLoopback(a *netlink.Addr) {
	if a.IP.To4() != nil {
		a.Label = loopbackLabel
	} else {
		a.Flags = loopbackV6Flags
	}
}

// ensureAddrs makes want, as host prefixes, present on link and removes the other addresses
// owned says are nodenet's. An address that is present already counts, whoever put it there.
// Additions go before removals, except for an owned address whose IP is wanted with another
// prefix length: IPv6 refuses the same IP twice, so that one goes first.
func ensureAddrs(nl *netlink.Handle, link netlink.Link, want []netip.Addr, owned func(netlink.Addr) bool, mark func(*netlink.Addr)) error {
	name := link.Attrs().Name
	have, err := dump(func() ([]netlink.Addr, error) { return nl.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	var present []netip.Addr
	var staleFirst, staleLast []netlink.Addr
	for _, a := range have {
		p, ok := addrPrefix(a)
		if !ok {
			continue
		}
		wanted := slices.Contains(want, p.Addr())
		switch {
		case wanted && owned(a) && !p.IsSingleIP():
			staleFirst = append(staleFirst, a)
		case wanted:
			present = append(present, p.Addr())
		case owned(a):
			staleLast = append(staleLast, a)
		}
	}
	for _, a := range staleFirst {
		if err := delAddr(nl, link, a); err != nil {
			return err
		}
	}
	for _, ip := range want {
		if slices.Contains(present, ip) {
			continue
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
		mark(a)
		if err := nl.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", ip, name, err)
		}
	}
	for _, a := range staleLast {
		if err := delAddr(nl, link, a); err != nil {
			return err
		}
	}
	return nil
}

func delAddr(nl *netlink.Handle, link netlink.Link, a netlink.Addr) error {
	if err := nl.AddrDel(link, &a); err != nil {
		return fmt.Errorf("remove %s from %s: %w", a.IPNet, link.Attrs().Name, err)
	}
	return nil
}

// addrPrefix is a's address and prefix length; false for what is not an IP address.
func addrPrefix(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, bits := a.Mask.Size()
	if bits != ip.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

// dumpAttempts bounds the retries of a dump the kernel flags as interrupted (NLM_F_DUMP_INTR):
// the table changed while it was read, and only a fresh dump is consistent.
const dumpAttempts = 5

func dump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpAttempts {
		if v, err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return v, err
}
