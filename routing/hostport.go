package routing

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// PortMapping is one hostPort mapping a runtime asks for (CNI capability portMappings): traffic to
// HostPort on the node goes to ContainerPort of the pod.
type PortMapping struct {
	HostPort      int
	ContainerPort int
	// Protocol is tcp, udp or sctp, in any case; empty means tcp.
	Protocol string
	// HostIP limits the mapping to one address of the node. Empty means every local address of
	// the node except loopback, in each family the pod has an address of; an unspecified address
	// (0.0.0.0, ::) means the same for its own family only. A loopback address (127.0.0.0/8, ::1)
	// is relayed in userspace (localports), for tcp and udp.
	HostIP string
}

func (m PortMapping) String() string {
	s := fmt.Sprintf("%d/%s->%d", m.HostPort, m.Protocol, m.ContainerPort)
	if m.HostIP != "" {
		s = m.HostIP + ":" + s
	}
	return s
}

// Attachment names one pod interface, the owner of its hostPort mappings.
type Attachment struct {
	ContainerID, IfName string
}

// maxOwnerLen keeps an owner key inside the kernel's element comment (255 bytes of userdata, of
// which the comment's type, length and terminating NUL take three).
const maxOwnerLen = 250

// key is how the attachment is recorded in the comment of its map elements: "containerID/ifName",
// or a digest of it for container IDs too long for a comment.
func (a Attachment) key() string {
	k := a.ContainerID + "/" + a.IfName
	if len(k) <= maxOwnerLen {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// InvalidPortMappingError says a mapping cannot be honoured as asked; nothing was changed.
type InvalidPortMappingError struct {
	Mapping PortMapping
	Reason  string
}

func (e *InvalidPortMappingError) Error() string {
	return fmt.Sprintf("port mapping %s: %s", e.Mapping, e.Reason)
}

// PortUnavailableError says the socket of a mapping on a loopback hostIP could not be opened,
// most often because another program of the node holds the address and port; nothing was
// changed.
type PortUnavailableError struct {
	Want string // the mapping, as "hostPort 8080/tcp on 127.0.0.1 to POD:PORT"
	Err  error  // the system call's error, such as syscall.EADDRINUSE
}

func (e *PortUnavailableError) Error() string {
	return fmt.Sprintf("%s: %v", e.Want, e.Err)
}

func (e *PortUnavailableError) Unwrap() error { return e.Err }

// PortConflictError says a mapping overlaps one another pod interface holds (or another mapping of
// the same request); nothing was changed.
type PortConflictError struct {
	Want, Held string // the two mappings, as "hostPort 8080/tcp on ... to POD:PORT"
	Holder     string // "containerID/ifName" of the holder
}

func (e *PortConflictError) Error() string {
	return fmt.Sprintf("%s conflicts with %s held by %s", e.Want, e.Held, e.Holder)
}

// hostPortEntry is one mapping in one IP family, as the kernel holds it: an element of one of the
// DNAT maps, or, for a loopback hostIP, of a relay map, which only records it.
type hostPortEntry struct {
	hostIP   netip.Addr // invalid: every local address of podIP's family except loopback
	proto    uint8      // IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP
	hostPort uint16
	podIP    netip.Addr
	podPort  uint16
}

func (e hostPortEntry) v6() bool { return e.podIP.Is6() }

// relayed reports whether the mapping is on a loopback address, which DNAT cannot reach without
// route_localnet: a socket of the daemon listens there and relays to the pod (localports).
func (e hostPortEntry) relayed() bool { return e.hostIP.IsLoopback() }

// slot is what two entries must share to be able to conflict.
type slot struct {
	v6    bool
	proto uint8
	port  uint16
}

func (e hostPortEntry) slot() slot { return slot{e.v6(), e.proto, e.hostPort} }

// overlaps reports whether a packet could match both entries: same family, protocol and port, and
// both for the same address, or one for every address and the other for an address that is not
// loopback (a mapping for every address covers no loopback address).
func (e hostPortEntry) overlaps(o hostPortEntry) bool {
	if e.slot() != o.slot() {
		return false
	}
	if e.hostIP.IsValid() && o.hostIP.IsValid() {
		return e.hostIP == o.hostIP
	}
	return !e.relayed() && !o.relayed()
}

func (e hostPortEntry) String() string {
	where := "every local IPv4 address"
	if e.v6() {
		where = "every local IPv6 address"
	}
	if e.hostIP.IsValid() {
		where = e.hostIP.String()
	}
	return fmt.Sprintf("hostPort %d/%s on %s to %s", e.hostPort, protoName(e.proto), where,
		netip.AddrPortFrom(e.podIP, e.podPort))
}

func compareEntries(a, b hostPortEntry) int {
	return cmp.Or(
		boolCmp(a.v6(), b.v6()),
		cmp.Compare(a.proto, b.proto),
		cmp.Compare(a.hostPort, b.hostPort),
		a.hostIP.Compare(b.hostIP),
		a.podIP.Compare(b.podIP),
		cmp.Compare(a.podPort, b.podPort),
	)
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case b:
		return -1
	}
	return 1
}

var protoNumbers = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

func protoName(p uint8) string {
	for n, v := range protoNumbers {
		if v == p {
			return n
		}
	}
	return strconv.Itoa(int(p))
}

// expandPortMappings turns the mappings of one pod interface into entries, one per mapping and
// family: a mapping for every address applies in each family the pod has an address of, one for a
// given hostIP only in that address's family. The result is sorted and free of duplicates, and
// none of its entries overlap another.
func expandPortMappings(podIPs []netip.Addr, mappings []PortMapping) ([]hostPortEntry, error) {
	var v4, v6 netip.Addr
	for _, ip := range podIPs {
		switch ip = ip.Unmap(); {
		case ip.Is4() && !v4.IsValid():
			v4 = ip
		case ip.Is6() && !v6.IsValid():
			v6 = ip
		}
	}
	var out []hostPortEntry
	for _, m := range mappings {
		bad := func(format string, args ...any) error {
			return &InvalidPortMappingError{Mapping: m, Reason: fmt.Sprintf(format, args...)}
		}
		if m.HostPort < 1 || m.HostPort > 65535 {
			return nil, bad("hostPort %d is not in 1..65535", m.HostPort)
		}
		if m.ContainerPort < 1 || m.ContainerPort > 65535 {
			return nil, bad("containerPort %d is not in 1..65535", m.ContainerPort)
		}
		name := strings.ToLower(cmp.Or(m.Protocol, "tcp"))
		proto, ok := protoNumbers[name]
		if !ok {
			return nil, bad("protocol %q is not one of tcp, udp, sctp", m.Protocol)
		}
		m.Protocol = name
		e := hostPortEntry{proto: proto, hostPort: uint16(m.HostPort), podPort: uint16(m.ContainerPort)}
		targets := []netip.Addr{v4, v6}
		if m.HostIP != "" {
			ip, err := netip.ParseAddr(m.HostIP)
			if err != nil || ip.Zone() != "" {
				return nil, bad("hostIP %q is not an IP address", m.HostIP)
			}
			ip = ip.Unmap()
			switch {
			case ip.IsLoopback() && proto == unix.IPPROTO_SCTP:
				// DNAT to a pod from a loopback address needs route_localnet, which would expose
				// every service bound to 127.0.0.1 to the network, so nodenet relays these in
				// userspace instead, where Go has no SCTP.
				return nil, bad("hostIP %s is a loopback address, which nodenet relays for tcp and udp only", ip)
			case ip.IsMulticast() || (ip.Is4() && ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
				return nil, bad("hostIP %s is not a unicast address", ip)
			}
			targets = []netip.Addr{v4}
			if ip.Is6() {
				targets = []netip.Addr{v6}
			}
			if !ip.IsUnspecified() {
				e.hostIP = ip
				if !targets[0].IsValid() {
					fam := 4
					if ip.Is6() {
						fam = 6
					}
					return nil, bad("the pod has no IPv%d address to send traffic for %s to", fam, ip)
				}
			}
		}
		for _, t := range targets {
			if t.IsValid() {
				e.podIP = t
				out = append(out, e)
			}
		}
	}
	slices.SortFunc(out, compareEntries)
	out = slices.Compact(out)
	for i := range out {
		for j := i + 1; j < len(out) && out[j].slot() == out[i].slot(); j++ {
			if out[i].overlaps(out[j]) {
				return nil, &PortConflictError{Want: out[j].String(), Held: out[i].String(), Holder: "the same pod"}
			}
		}
	}
	return out, nil
}
