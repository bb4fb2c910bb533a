package conntrack

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/proxy"
)

// The protocols whose entries are cleaned. TCP is left alone, as in
// kube-proxy: a TCP client learns that its backend is gone (reset or
// timeout) and opens a new connection, with a new entry. A UDP client keeps
// sending on the same tuple and so keeps a stale entry alive forever. SCTP
// is cleaned as kube-proxy did before its cleanup became UDP-only: a client
// that sets up its association again from the same ports may keep hitting
// the old entry, and with it the old backend.
var cleanedProtocols = map[proxy.Protocol]uint8{
	proxy.UDP:  unix.IPPROTO_UDP,
	proxy.SCTP: unix.IPPROTO_SCTP,
}

// frontend is where a Service port receives traffic: a Service IP (cluster,
// external or load-balancer) and the port, or for a NodePort the unspecified
// address of the family and the node port, since a NodePort accepts traffic
// on any node address.
type frontend struct {
	proto uint8
	addr  netip.Addr
	port  uint16
}

// wanted maps each frontend of a Service port with serving endpoints to
// those endpoints. Entries to a frontend that reach anything else are
// stale.
type wanted map[frontend]map[netip.AddrPort]bool

// wantedOf computes the frontends and endpoints of st the way kube-proxy's
// cleanup does. Traffic policies, topology and termination are ignored: an
// entry stays as long as its backend serves, as a TCP connection would.
// Frontends without serving endpoints are left out: their traffic is
// rejected by the rules, and entries that predate that are resolved once
// endpoints come back.
func wantedOf(st proxy.State) wanted {
	w := wanted{}
	for _, svc := range st.Services {
		eps := st.Endpoints[svc.Key()]
		svcIPs := slices.Concat(svc.ClusterIPs, svc.ExternalIPs, svc.LoadBalancerIPs)
		for _, p := range svc.Ports {
			proto, ok := cleanedProtocols[p.Protocol]
			if !ok {
				continue
			}
			port, ok := portOf(p.Port)
			if !ok {
				continue
			}
			nodePort, hasNodePort := portOf(p.NodePort)
			// Each family on its own, as kube-proxy runs one proxier per
			// family: a frontend is only served by endpoints of its family.
			for _, unspec := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
				serving := servingOf(eps, p.Name, unspec.Is4())
				if len(serving) == 0 {
					continue
				}
				for _, ip := range svcIPs {
					if ip = ip.Unmap(); ip.IsValid() && ip.Is4() == unspec.Is4() {
						w.add(frontend{proto, ip, port}, serving)
					}
				}
				if hasNodePort {
					w.add(frontend{proto, unspec, nodePort}, serving)
				}
			}
		}
	}
	return w
}

// add merges serving into the endpoints of f. Two Services may claim one
// frontend (a shared external IP); the union keeps the entries of both, so
// a misconfiguration never cuts live traffic.
func (w wanted) add(f frontend, serving []netip.AddrPort) {
	if w[f] == nil {
		w[f] = map[netip.AddrPort]bool{}
	}
	for _, ap := range serving {
		w[f][ap] = true
	}
}

// servingOf returns the serving endpoints of one family for the Service
// port named name, with their target port: kube-proxy compares the reply
// source port too, so a changed targetPort also retires entries.
func servingOf(eps []proxy.Endpoint, name string, is4 bool) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range eps {
		addr := ep.Addr.Unmap()
		// Ready implies serving; checking both keeps an endpoint that a
		// caller marked only Ready from losing its entries.
		if !addr.IsValid() || addr.Is4() != is4 || !(ep.Serving || ep.Ready) {
			continue
		}
		port, ok := portOf(ep.Ports[name])
		if !ok {
			continue
		}
		out = append(out, netip.AddrPortFrom(addr, port))
	}
	return out
}

func portOf(p int32) (uint16, bool) {
	if p <= 0 || p > 65535 {
		return 0, false
	}
	return uint16(p), true
}

// stale reports whether f was sent to a frontend of w and answered by
// something other than one of its serving endpoints. The reply source is
// the backend the entry was DNATed to, or the frontend itself for an entry
// created before any rule caught the traffic. A NodePort is matched by
// port alone, on any destination address, as in kube-proxy: node ports come
// from a range kept for them, and another flow that happens to use such a
// port only has its entry created again by its next packet.
func (w wanted) stale(f conntrack.Flow) bool {
	proto := f.TupleOrig.Proto.Protocol
	dst := f.TupleOrig.IP.DestinationAddress.Unmap()
	port := f.TupleOrig.Proto.DestinationPort
	reply := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort)
	unspec := netip.IPv4Unspecified()
	if dst.Is6() {
		unspec = netip.IPv6Unspecified()
	}
	for _, fe := range []frontend{{proto, dst, port}, {proto, unspec, port}} {
		if eps, ok := w[fe]; ok && !eps[reply] {
			return true
		}
	}
	return false
}

func (w wanted) equal(o wanted) bool {
	return maps.EqualFunc(w, o, maps.Equal)
}
