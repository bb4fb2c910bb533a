package routing

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// The overlay's state in its own terms, so that the decision logic and the diff run, and are
// tested, without a kernel. Devices are named, not indexed, for the same reason.

// ovRoute is a route to a peer's pod range.
type ovRoute struct {
	Dst    netip.Prefix
	Via    netip.Addr
	Dev    string
	OnLink bool
	Metric int

	peer string         // the peer it serves, on wanted routes
	raw  *netlink.Route // the kernel's route, on routes read back
}

// ovNeigh is a neighbour entry on the VXLAN device: a peer's VTEP address and its MAC.
type ovNeigh struct {
	IP        netip.Addr
	MAC       string // net.HardwareAddr.String(), so entries compare with ==
	Permanent bool

	peer string
}

// ovFDB is a forwarding entry of the VXLAN device: where frames to a peer's VTEP MAC go.
type ovFDB struct {
	MAC       string
	Dst       netip.Addr
	Permanent bool

	peer string
}

// ovState is the overlay's part of the kernel: routes of RouteProtocol in the main table and the
// neighbour and FDB entries of the VXLAN device.
type ovState struct {
	Routes []ovRoute
	Neighs []ovNeigh
	FDB    []ovFDB
}

// defaultMetric is the metric the kernel gives a route added without one: 0 for IPv4, 1024 for
// IPv6. Wanted routes carry it explicitly so that they compare equal to what is read back.
func defaultMetric(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1024
}

// String renders the route as `ip route` does.
func (r ovRoute) String() string {
	s := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Via, r.Dev)
	if r.Metric != defaultMetric(r.Dst.Addr()) {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	if r.OnLink {
		s += " onlink"
	}
	return s
}

// String renders the entry as `ip neigh` does.
func (n ovNeigh) String() string {
	s := fmt.Sprintf("%s dev %s lladdr %s", n.IP, VXLANDevice, n.MAC)
	if n.Permanent {
		s += " PERMANENT"
	}
	return s
}

// String renders the entry as `bridge fdb` does.
func (f ovFDB) String() string {
	s := fmt.Sprintf("%s dev %s dst %s self", f.MAC, VXLANDevice, f.Dst)
	if f.Permanent {
		s += " permanent"
	}
	return s
}

// String renders the state as golden text, one entry a line, sorted.
func (s ovState) String() string {
	var lines []string
	for _, r := range s.Routes {
		lines = append(lines, "route "+r.String())
	}
	for _, n := range s.Neighs {
		lines = append(lines, "neigh "+n.String())
	}
	for _, f := range s.FDB {
		lines = append(lines, "fdb "+f.String())
	}
	return strings.Join(lines, "\n")
}

// The keys under which the kernel knows an entry: an entry with the key of a wanted one is
// replaced by it, one whose key is not wanted is deleted.
type (
	routeKey struct {
		dst    netip.Prefix
		metric int
	}
	fdbKey struct {
		mac string
		dst netip.Addr
	}
)

func (r ovRoute) key() routeKey { return routeKey{r.Dst, r.Metric} }
func (f ovFDB) key() fdbKey     { return fdbKey{f.MAC, f.Dst} }

func (r ovRoute) same(o ovRoute) bool {
	return r.Dst == o.Dst && r.Via == o.Via && r.Dev == o.Dev && r.OnLink == o.OnLink && r.Metric == o.Metric
}

// path is how one pod range of a peer is reached.
type path int

const (
	pathDirect path = iota + 1
	pathVXLAN
)

// topology is what the plan needs to know about this node.
type topology struct {
	mode     string
	local    netip.Addr
	podCIDRs []netip.Prefix
	uplink   string         // the name of the link carrying local
	subnets  []netip.Prefix // the subnets of the uplink's addresses in local's family
	vtepMAC  net.HardwareAddr
}

// choosePath decides how a pod range of a peer at addr is reached. Direct routing needs the
// peer on a subnet of the uplink (a shared L2 segment: the kernel only accepts an on-link next
// hop) and a next hop of the range's family.
func choosePath(t topology, addr netip.Addr, cidr netip.Prefix) (path, error) {
	sameFamily := addr.Is4() == cidr.Addr().Is4()
	onLink := slices.ContainsFunc(t.subnets, func(s netip.Prefix) bool { return s.Contains(addr) })
	switch t.mode {
	case ModeVXLAN:
		return pathVXLAN, nil
	case ModeDirect:
		if !onLink {
			return 0, fmt.Errorf("address %s is on no subnet of %s: direct routing needs a shared L2 segment", addr, t.uplink)
		}
		if !sameFamily {
			return 0, fmt.Errorf("pod CIDR %s cannot be routed directly via %s: other address family", cidr, addr)
		}
		return pathDirect, nil
	default:
		if onLink && sameFamily {
			return pathDirect, nil
		}
		return pathVXLAN, nil
	}
}

// overlayPlan is the wanted state for a set of peers with the verdict on each peer.
type overlayPlan struct {
	want                             ovState
	direct, vxlan, skipped, rejected []string
	errs                             []error
	skipReasons                      map[string]string
}

// plan computes the wanted overlay state. A peer is routed whole or not at all: one with an
// error is rejected, one that lacks data is skipped, and neither gets any entry, so a stale
// entry of theirs goes in the diff. Own pod ranges are never routed.
func plan(t topology, peers []Peer) overlayPlan {
	p := overlayPlan{skipReasons: map[string]string{}}
	reject := map[string]error{}
	rejectf := func(name, format string, args ...any) {
		if reject[name] != nil {
			return // the first reason is enough
		}
		who := "peer " + name
		if name == "" {
			who = "unnamed peer"
		}
		reject[name] = fmt.Errorf("%s: %w", who, fmt.Errorf(format, args...))
	}

	peers = slices.Clone(peers)
	slices.SortStableFunc(peers, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	seen := map[string]int{}
	for _, pr := range peers {
		seen[pr.Name]++
	}
	for _, pr := range peers {
		switch addr := pr.Address.Unmap(); {
		case pr.Name == "":
			rejectf(pr.Name, "address %s: a peer needs a name", pr.Address)
		case seen[pr.Name] > 1:
			rejectf(pr.Name, "listed %d times", seen[pr.Name])
		case !addr.IsValid() || addr.IsUnspecified():
			rejectf(pr.Name, "no address")
		case addr == t.local:
			rejectf(pr.Name, "has this node's address %s", addr)
		case addr.Is4() != t.local.Is4():
			rejectf(pr.Name, "address %s is not of the family of this node's %s", addr, t.local)
		case pr.VTEPMAC != nil && (len(pr.VTEPMAC) != 6 || pr.VTEPMAC[0]&1 != 0 || isZeroMAC(pr.VTEPMAC)):
			rejectf(pr.Name, "vtep mac %s is not a unicast ethernet address", pr.VTEPMAC)
		case pr.VTEPMAC != nil && slices.Equal(pr.VTEPMAC, t.vtepMAC):
			rejectf(pr.Name, "vtep mac %s is this node's", pr.VTEPMAC)
		}
		for _, c := range pr.PodCIDRs {
			if !c.IsValid() {
				rejectf(pr.Name, "invalid pod CIDR %s", c)
			}
		}
	}
	rejectOverlaps(t.podCIDRs, peers, rejectf)
	rejectUnderlayRanges(t, peers, rejectf)

	// Paths, and the peers that lack data for theirs.
	paths := map[string][]path{}
	for _, pr := range peers {
		if reject[pr.Name] != nil {
			continue
		}
		if len(pr.PodCIDRs) == 0 {
			p.skipReasons[pr.Name] = "no pod CIDRs"
			continue
		}
		for _, c := range pr.PodCIDRs {
			pa, err := choosePath(t, pr.Address.Unmap(), c.Masked())
			if err != nil {
				rejectf(pr.Name, "%w", err)
				break
			}
			paths[pr.Name] = append(paths[pr.Name], pa)
		}
		if reject[pr.Name] == nil && slices.Contains(paths[pr.Name], pathVXLAN) && pr.VTEPMAC == nil {
			p.skipReasons[pr.Name] = "no vtep mac published"
		}
	}
	// Two VXLAN peers with one MAC would share one FDB entry, and one would get the other's
	// traffic.
	byMAC := map[string][]string{}
	for _, pr := range peers {
		if reject[pr.Name] == nil && p.skipReasons[pr.Name] == "" && slices.Contains(paths[pr.Name], pathVXLAN) {
			byMAC[pr.VTEPMAC.String()] = append(byMAC[pr.VTEPMAC.String()], pr.Name)
		}
	}
	for mac, names := range byMAC {
		if len(names) > 1 {
			for _, n := range names {
				rejectf(n, "vtep mac %s is also that of %s", mac, strings.Join(slices.DeleteFunc(slices.Clone(names), func(s string) bool { return s == n }), ", "))
			}
		}
	}

	for _, pr := range peers {
		if err := reject[pr.Name]; err != nil {
			// Peers of one name are next to each other, and listed once.
			if n := len(p.rejected); n == 0 || p.rejected[n-1] != pr.Name {
				p.rejected = append(p.rejected, pr.Name)
				p.errs = append(p.errs, err)
			}
			continue
		}
		if _, ok := p.skipReasons[pr.Name]; ok {
			p.skipped = append(p.skipped, pr.Name)
			continue
		}
		addr := pr.Address.Unmap()
		mac := pr.VTEPMAC.String()
		var direct, vxlan bool
		for i, c := range pr.PodCIDRs {
			c = c.Masked()
			switch paths[pr.Name][i] {
			case pathDirect:
				p.want.Routes = append(p.want.Routes, ovRoute{
					Dst: c, Via: addr, Dev: t.uplink, Metric: defaultMetric(c.Addr()), peer: pr.Name,
				})
				direct = true
			case pathVXLAN:
				vtep := vtepAddr(c)
				p.want.Routes = append(p.want.Routes, ovRoute{
					Dst: c, Via: vtep, Dev: VXLANDevice, OnLink: true, Metric: defaultMetric(c.Addr()), peer: pr.Name,
				})
				p.want.Neighs = append(p.want.Neighs, ovNeigh{IP: vtep, MAC: mac, Permanent: true, peer: pr.Name})
				if !vxlan {
					p.want.FDB = append(p.want.FDB, ovFDB{MAC: mac, Dst: addr, Permanent: true, peer: pr.Name})
				}
				vxlan = true
			}
		}
		if direct {
			p.direct = append(p.direct, pr.Name)
		}
		if vxlan {
			p.vxlan = append(p.vxlan, pr.Name)
		}
	}
	p.want.sort()
	return p
}

func isZeroMAC(mac net.HardwareAddr) bool {
	return !slices.ContainsFunc(mac, func(b byte) bool { return b != 0 })
}

// rejectOverlaps rejects every peer with a pod range that overlaps this node's or another
// peer's. This node has a handful of ranges, checked one by one. Among the peers' ranges, which
// either nest or are disjoint, a sort by address and then length leaves each range to be checked
// against the widest one still open before it only.
func rejectOverlaps(own []netip.Prefix, peers []Peer, rejectf func(name, format string, args ...any)) {
	type owned struct {
		p     netip.Prefix
		owner string
	}
	var all []owned
	for _, pr := range peers {
		for _, c := range pr.PodCIDRs {
			if !c.IsValid() {
				continue
			}
			c = c.Masked()
			if i := slices.IndexFunc(own, c.Overlaps); i >= 0 {
				rejectf(pr.Name, "pod CIDR %s overlaps this node's %s", c, own[i])
				continue
			}
			all = append(all, owned{c, pr.Name})
		}
	}
	slices.SortStableFunc(all, func(a, b owned) int {
		return cmp.Or(a.p.Addr().Compare(b.p.Addr()), cmp.Compare(a.p.Bits(), b.p.Bits()))
	})
	var open *owned
	for i := range all {
		cur := &all[i]
		if open == nil || !open.p.Contains(cur.p.Addr()) {
			open = cur
			continue
		}
		if open.owner == cur.owner {
			rejectf(cur.owner, "pod CIDRs %s and %s overlap", open.p, cur.p)
			continue
		}
		rejectf(open.owner, "pod CIDR %s overlaps %s of peer %s", open.p, cur.p, cur.owner)
		rejectf(cur.owner, "pod CIDR %s overlaps %s of peer %s", cur.p, open.p, open.owner)
	}
}

// rejectUnderlayRanges rejects every peer with a pod range that takes in the underlay: a
// subnet of this node's uplink or a node's address. Routing it would send the underlay's own
// packets, the encapsulated ones among them, into the overlay.
func rejectUnderlayRanges(t topology, peers []Peer, rejectf func(name, format string, args ...any)) {
	addrs := []netip.Addr{t.local}
	for _, pr := range peers {
		addrs = append(addrs, pr.Address.Unmap())
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, pr := range peers {
		for _, c := range pr.PodCIDRs {
			if !c.IsValid() {
				continue
			}
			c = c.Masked()
			if i := slices.IndexFunc(t.subnets, c.Overlaps); i >= 0 {
				rejectf(pr.Name, "pod CIDR %s overlaps the underlay subnet %s", c, t.subnets[i])
				continue
			}
			// The first address at or above the range's start is in it if any is.
			i, _ := slices.BinarySearchFunc(addrs, c.Addr(), netip.Addr.Compare)
			if i < len(addrs) && c.Contains(addrs[i]) {
				rejectf(pr.Name, "pod CIDR %s takes in the node address %s", c, addrs[i])
			}
		}
	}
}

func (s *ovState) sort() {
	slices.SortFunc(s.Routes, func(a, b ovRoute) int {
		return cmp.Or(a.Dst.Addr().Compare(b.Dst.Addr()), cmp.Compare(a.Dst.Bits(), b.Dst.Bits()), cmp.Compare(a.Metric, b.Metric))
	})
	slices.SortFunc(s.Neighs, func(a, b ovNeigh) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(s.FDB, func(a, b ovFDB) int { return cmp.Or(cmp.Compare(a.MAC, b.MAC), a.Dst.Compare(b.Dst)) })
}

// opKind is what an op does to the kernel.
type opKind int

const (
	opReplace opKind = iota
	opDelete
)

// op is one kernel change. Exactly one of route, neigh and fdb is set.
type op struct {
	kind  opKind
	route *ovRoute
	neigh *ovNeigh
	fdb   *ovFDB
}

func (o op) String() string {
	verb := "replace"
	if o.kind == opDelete {
		verb = "delete"
	}
	switch {
	case o.route != nil:
		return verb + " route " + o.route.String()
	case o.neigh != nil:
		return verb + " neigh " + o.neigh.String()
	default:
		return verb + " fdb " + o.fdb.String()
	}
}

// peer is the peer a wanted entry serves, "" for the deletion of a stale one.
func (o op) peer() string {
	switch {
	case o.kind == opDelete:
		return ""
	case o.route != nil:
		return o.route.peer
	case o.neigh != nil:
		return o.neigh.peer
	default:
		return o.fdb.peer
	}
}

// diff lists the changes that take the kernel from have to want: replacements first, each
// peer's FDB entry before its neighbour entry before its route, so that a route is never used
// before the entries it needs; then deletions in the reverse order. An unchanged world gives
// none.
func diff(have, want ovState) []op {
	var adds, dels []op

	haveFDB := map[fdbKey]ovFDB{}
	for _, h := range have.FDB {
		haveFDB[h.key()] = h
	}
	for i, w := range want.FDB {
		if h, ok := haveFDB[w.key()]; !ok || !h.Permanent {
			adds = append(adds, op{kind: opReplace, fdb: &want.FDB[i]})
		}
	}
	haveNeigh := map[netip.Addr]ovNeigh{}
	for _, h := range have.Neighs {
		haveNeigh[h.IP] = h
	}
	for i, w := range want.Neighs {
		if h, ok := haveNeigh[w.IP]; !ok || h.MAC != w.MAC || !h.Permanent {
			adds = append(adds, op{kind: opReplace, neigh: &want.Neighs[i]})
		}
	}
	haveRoutes := map[routeKey][]ovRoute{}
	for _, h := range have.Routes {
		haveRoutes[h.key()] = append(haveRoutes[h.key()], h)
	}
	for i, w := range want.Routes {
		if !slices.ContainsFunc(haveRoutes[w.key()], w.same) {
			adds = append(adds, op{kind: opReplace, route: &want.Routes[i]})
		}
	}

	wantRoutes := map[routeKey]bool{}
	for _, w := range want.Routes {
		wantRoutes[w.key()] = true
	}
	for i, h := range have.Routes {
		if !wantRoutes[h.key()] {
			dels = append(dels, op{kind: opDelete, route: &have.Routes[i]})
		}
	}
	wantNeigh := map[netip.Addr]bool{}
	for _, w := range want.Neighs {
		wantNeigh[w.IP] = true
	}
	for i, h := range have.Neighs {
		// Only permanent entries are ours; the kernel keeps and expires the others.
		if h.Permanent && !wantNeigh[h.IP] {
			dels = append(dels, op{kind: opDelete, neigh: &have.Neighs[i]})
		}
	}
	wantFDB := map[fdbKey]bool{}
	for _, w := range want.FDB {
		wantFDB[w.key()] = true
	}
	for i, h := range have.FDB {
		if !wantFDB[h.key()] {
			dels = append(dels, op{kind: opDelete, fdb: &have.FDB[i]})
		}
	}
	return append(adds, dels...)
}
