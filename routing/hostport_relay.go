package routing

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/nodenet/nodenet/routing/localports"
)

// The mappings on a loopback hostIP (127.0.0.0/8, ::1). DNAT cannot carry them without
// route_localnet, which nodenet never sets, so a Relay's sockets serve them, and the relay maps
// hostport-relay-v4/-v6, which no rule reads, record them in the kernel like the other mappings:
// conflicts, ownership, CHECK, GC and adoption after a restart work the same way. HostPorts hands
// the relay the whole set of relayed mappings after every change to it.

// Relay serves the mappings on a loopback hostIP, which DNAT cannot reach without
// route_localnet: it listens on the address and port in the node's namespace and relays to the
// pod. *localports.Relay is the daemon's.
type Relay interface {
	// Set makes the relayed mappings exactly want; a socket that cannot be opened is a
	// *localports.ListenError in the returned join, the rest is done all the same.
	Set(want []localports.Mapping) error
	// Check reports whether m is relayed as asked.
	Check(m localports.Mapping) error
}

var _ Relay = (*localports.Relay)(nil)

// relayMapping is the relay's view of a relayed entry.
func (e hostPortEntry) relayMapping() localports.Mapping {
	return localports.Mapping{Proto: protoName(e.proto), Listen: netip.AddrPortFrom(e.hostIP, e.hostPort),
		Target: netip.AddrPortFrom(e.podIP, e.podPort)}
}

// expand is expandPortMappings, refusing loopback hostIPs when there is no relay for them.
func (h *HostPorts) expand(podIPs []netip.Addr, mappings []PortMapping) ([]hostPortEntry, error) {
	want, err := expandPortMappings(podIPs, mappings)
	if err != nil || h.relay != nil {
		return want, err
	}
	for _, e := range want {
		if e.relayed() {
			for _, m := range mappings {
				if ip, err := netip.ParseAddr(m.HostIP); err == nil && ip.Unmap() == e.hostIP {
					return nil, &InvalidPortMappingError{Mapping: m,
						Reason: fmt.Sprintf("hostIP %s is a loopback address, and this daemon has no relay for it", e.hostIP)}
				}
			}
		}
	}
	return want, nil
}

// relayedOf lists the relay's mappings: those of owners, then the relayed ones of extra, which
// win over an owner's on the same address and port (the relay's last wins).
func (h *HostPorts) relayedOf(extra []hostPortEntry) []localports.Mapping {
	var out []localports.Mapping
	for _, owner := range slices.Sorted(maps.Keys(h.owners)) {
		for _, e := range h.owners[owner] {
			if e.relayed() {
				out = append(out, e.relayMapping())
			}
		}
	}
	for _, e := range extra {
		if e.relayed() {
			out = append(out, e.relayMapping())
		}
	}
	return out
}

// openRelayedLocked has the relay serve what it serves now plus the relayed entries of want,
// closing nothing. A socket of added that cannot be opened undoes it and fails with
// *PortUnavailableError; sockets of other pods' mappings that still cannot be opened (see
// syncRelayLocked) are only logged.
func (h *HostPorts) openRelayedLocked(added, want []hostPortEntry) error {
	err := h.relay.Set(h.relayedOf(want))
	if err == nil {
		return nil
	}
	var mine, others []error
	for _, e := range flatten(err) {
		var le *localports.ListenError
		if !errors.As(e, &le) {
			// Not a port but the relay itself (shut down): nothing can be relayed.
			return fmt.Errorf("relay hostPorts on loopback addresses: %w", err)
		}
		i := slices.IndexFunc(added, func(a hostPortEntry) bool {
			m := a.relayMapping()
			return a.relayed() && m.Listen == le.Mapping.Listen && m.Proto == le.Mapping.Proto
		})
		if i < 0 {
			others = append(others, e)
			continue
		}
		mine = append(mine, &PortUnavailableError{Want: added[i].String(), Err: le.Err})
	}
	if len(others) > 0 {
		h.log.Warn("relayed hostPorts of other pods still cannot be opened", zap.Error(errors.Join(others...)))
	}
	if len(mine) == 0 {
		return nil
	}
	// Closes what this call opened; the failure to report is ours.
	h.warnRelay(h.syncRelayLocked())
	return errors.Join(mine...)
}

// flatten lists the errors of a join, recursively; any other error is a list of one.
func flatten(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, flatten(e)...)
	}
	return out
}

// syncRelayLocked makes the relay serve exactly the relayed mappings of owners. A socket that
// cannot be opened (another program holds the port, as may happen after a restart) is tried again
// by every later change and by Ensure.
func (h *HostPorts) syncRelayLocked() error {
	if h.relay == nil {
		return nil
	}
	if err := h.relay.Set(h.relayedOf(nil)); err != nil {
		return fmt.Errorf("relay hostPorts on loopback addresses: %w", err)
	}
	return nil
}

// warnRelay logs an error of syncRelayLocked where the call's own result is another.
func (h *HostPorts) warnRelay(err error) {
	if err != nil {
		h.log.Warn("relayed hostPorts cannot all be opened; retried later", zap.Error(err))
	}
}
