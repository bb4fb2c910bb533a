package routing

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// conntrackTable is the part of the conntrack netlink API the hostPort cleanup uses.
type conntrackTable interface {
	Dump(*conntrack.DumpOptions) ([]conntrack.Flow, error)
	Delete(conntrack.Flow) error
	Close() error
}

var _ conntrackTable = (*conntrack.Conn)(nil)

// dialConntrack opens a conntrack socket in the namespace open as netnsFD (0: the calling
// thread's).
func dialConntrack(netnsFD int) (conntrackTable, error) {
	c, err := conntrack.Dial(&netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	return c, nil
}

// connectionless reports whether a mapping's protocol keeps a flow on its conntrack entry for as
// long as the client sends, whatever the rules say now: UDP, and SCTP as kube-proxy treats it.
// A TCP flow ends, and a new one takes the rules in force.
func (e hostPortEntry) connectionless() bool {
	return e.proto == unix.IPPROTO_UDP || e.proto == unix.IPPROTO_SCTP
}

// staleAfterRemove reports whether f was sent to the pod by mapping e, which is gone: the client
// would keep reaching the old pod address, or nothing, until it paused long enough for the entry
// to expire. local holds the node's addresses, which a mapping for every address covered; a flow
// to another address (a Service's, say) that reached the same pod port is not the mapping's.
func staleAfterRemove(e hostPortEntry, f conntrack.Flow, local map[netip.Addr]bool) bool {
	o, r := f.TupleOrig, f.TupleReply
	return o.Proto.Protocol == e.proto && o.Proto.DestinationPort == e.hostPort &&
		r.IP.SourceAddress == e.podIP && r.Proto.SourcePort == e.podPort &&
		covers(e, o.IP.DestinationAddress, local)
}

// covers reports whether mapping e applies to traffic to dst.
func covers(e hostPortEntry, dst netip.Addr, local map[netip.Addr]bool) bool {
	if e.hostIP.IsValid() {
		return dst == e.hostIP
	}
	return dst.Is6() == e.v6() && local[dst] && !dst.IsLoopback()
}

// staleAfterAdd reports whether f is a flow mapping e, just added, should carry but does not: a
// client that sent to the host port before the mapping existed has an entry that delivers to the
// node itself (no DNAT), and would keep it for as long as it sends. local holds the node's
// addresses, which a mapping for every address covers.
func staleAfterAdd(e hostPortEntry, f conntrack.Flow, local map[netip.Addr]bool) bool {
	o := f.TupleOrig
	return o.Proto.Protocol == e.proto && o.Proto.DestinationPort == e.hostPort && !f.Status.DstNAT() &&
		covers(e, o.IP.DestinationAddress, local)
}

// cleanConntrack deletes the UDP and SCTP entries that removed mappings sent to their pods and
// that added mappings should carry, reading the table once. It reports how many it deleted.
func (h *HostPorts) cleanConntrack(added, removed []hostPortEntry) (int, error) {
	added = connectionlessOnly(added)
	removed = connectionlessOnly(removed)
	if len(added) == 0 && len(removed) == 0 {
		return 0, nil
	}
	addrs, err := h.localAddrs()
	if err != nil {
		return 0, err
	}
	local := map[netip.Addr]bool{}
	for _, a := range addrs {
		local[a] = true
	}
	ct, err := h.dialCT()
	if err != nil {
		return 0, err
	}
	defer ct.Close()
	flows, err := ct.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("dump conntrack table: %w", err)
	}
	var deleted int
	var errs []error
	for _, f := range flows {
		stale := false
		for _, e := range removed {
			stale = stale || staleAfterRemove(e, f, local)
		}
		for _, e := range added {
			stale = stale || staleAfterAdd(e, f, local)
		}
		if !stale {
			continue
		}
		// An entry that expired since the dump is gone, as wanted.
		switch err := ct.Delete(f); {
		case err == nil:
			deleted++
		case errors.Is(err, unix.ENOENT):
		default:
			errs = append(errs, fmt.Errorf("delete conntrack entry %s: %w", f.TupleOrig, err))
		}
	}
	return deleted, errors.Join(errs...)
}

// connectionlessOnly keeps the UDP and SCTP entries that conntrack carries: not the relayed ones,
// whose sessions end with the relay's sockets.
func connectionlessOnly(es []hostPortEntry) []hostPortEntry {
	var out []hostPortEntry
	for _, e := range es {
		if e.connectionless() && !e.relayed() {
			out = append(out, e)
		}
	}
	return out
}
