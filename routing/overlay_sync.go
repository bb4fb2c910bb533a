package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Sync makes the kernel match the peers: it computes the wanted routes, neighbour and FDB
// entries, diffs them with what the kernel has, replaces before it deletes, and returns the
// state reached. In vxlan and auto mode it first brings the VXLAN device to its state, so a
// device someone removed comes back with everything on it; in direct mode it removes a device
// left from another mode, after the routes have moved off it.
//
// A peer whose data conflicts (a pod range overlapping this node's or another peer's, a
// duplicate name or VTEP MAC, ...) is rejected with an error naming it, and the others are
// synced all the same. The returned error joins every such error and every failed change.
func (o *Overlay) Sync(peers []Peer) (SyncResult, error) {
	o.mu.Lock()
	defer o.mu.Unlock()

	up, subnets, err := o.uplink()
	if err != nil {
		return SyncResult{}, err
	}
	var (
		res  SyncResult
		errs []error
		dev  netlink.Link
	)
	devIndex := map[string]int{up.Attrs().Name: up.Attrs().Index}
	if o.cfg.Mode != ModeDirect {
		var n int
		dev, n, err = o.ensureDevice(up)
		res.Changes += n
		if err != nil {
			// Peers that are reached directly need no device: they are synced all the same,
			// and the ones that need it fail one by one below.
			errs = append(errs, err)
			dev = nil
		} else {
			devIndex[VXLANDevice] = dev.Attrs().Index
		}
	}

	p := plan(topology{
		mode:     o.cfg.Mode,
		local:    o.cfg.LocalAddress,
		podCIDRs: o.cfg.PodCIDRs,
		uplink:   up.Attrs().Name,
		subnets:  subnets,
		vtepMAC:  vtepMAC(o.cfg.LocalAddress),
	}, peers)
	for _, name := range p.skipped {
		o.log.Debug("peer skipped", zap.String("peer", name), zap.String("reason", p.skipReasons[name]))
	}
	errs = append(errs, p.errs...)

	have, err := o.kernelState(devIndex, dev)
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	failed := map[string]bool{}
	for _, c := range diff(have, p.want) {
		if name := c.peer(); name != "" && failed[name] {
			continue // the peer's other entries would be of no use without this one
		}
		changed, err := o.apply(c, devIndex)
		if err != nil {
			if name := c.peer(); name != "" {
				failed[name] = true
				err = fmt.Errorf("peer %s: %w", name, err)
			}
			errs = append(errs, err)
			continue
		}
		if changed {
			res.Changes++
			o.log.Debug("overlay changed", zap.Stringer("change", c))
		}
	}
	if o.cfg.Mode == ModeDirect {
		n, err := o.removeDevice()
		res.Changes += n
		if err != nil {
			errs = append(errs, err)
		}
	}

	res.Direct = without(p.direct, failed)
	res.VXLAN = without(p.vxlan, failed)
	res.Skipped = p.skipped
	res.Rejected = p.rejected
	for name := range failed {
		res.Rejected = append(res.Rejected, name)
	}
	slices.Sort(res.Rejected)
	if res.Changes > 0 || len(errs) > 0 {
		o.log.Info("synced overlay", zap.Int("changes", res.Changes), zap.Int("direct", len(res.Direct)),
			zap.Int("vxlan", len(res.VXLAN)), zap.Strings("skipped", res.Skipped), zap.Strings("rejected", res.Rejected))
	}
	return res, errors.Join(errs...)
}

func without(names []string, drop map[string]bool) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return drop[n] })
}

// kernelState reads the overlay's part of the kernel: the routes of RouteProtocol in the main
// table, and the neighbour and FDB entries of the VXLAN device when there is one.
func (o *Overlay) kernelState(devIndex map[string]int, dev netlink.Link) (ovState, error) {
	var s ovState
	names := map[int]string{}
	for name, index := range devIndex {
		names[index] = name
	}
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	routes, err := dump(func() ([]netlink.Route, error) {
		return o.nl.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return s, fmt.Errorf("list routes: %w", err)
	}
	for i, r := range routes {
		if r.Dst == nil {
			continue // a default route is never one of ours, whatever its protocol
		}
		via, _ := netip.AddrFromSlice(r.Gw)
		name, ok := names[r.LinkIndex]
		if !ok {
			// Another device, such as the VXLAN device in direct mode: the route is replaced
			// or deleted, and the name only tells the log where it was.
			name = fmt.Sprintf("if%d", r.LinkIndex)
			if link, err := o.nl.LinkByIndex(r.LinkIndex); err == nil {
				name = link.Attrs().Name
			}
			names[r.LinkIndex] = name
		}
		s.Routes = append(s.Routes, ovRoute{
			Dst:    fromIPNet(r.Dst),
			Via:    via.Unmap(),
			Dev:    name,
			OnLink: r.Flags&unix.RTNH_F_ONLINK != 0,
			Metric: r.Priority,
			raw:    &routes[i],
		})
	}
	if dev == nil {
		s.sort()
		return s, nil
	}
	index := dev.Attrs().Index
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, err := dump(func() ([]netlink.Neigh, error) { return o.nl.NeighList(index, fam) })
		if err != nil {
			return s, fmt.Errorf("list neighbours of %s: %w", VXLANDevice, err)
		}
		for _, n := range neighs {
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || n.State&netlink.NUD_NOARP != 0 {
				continue // multicast and the like, which the kernel keeps by itself
			}
			s.Neighs = append(s.Neighs, ovNeigh{
				IP: ip.Unmap(), MAC: n.HardwareAddr.String(), Permanent: n.State&netlink.NUD_PERMANENT != 0,
			})
		}
	}
	fdb, err := dump(func() ([]netlink.Neigh, error) { return o.nl.NeighList(index, unix.AF_BRIDGE) })
	if err != nil {
		return s, fmt.Errorf("list fdb of %s: %w", VXLANDevice, err)
	}
	for _, f := range fdb {
		dst, _ := netip.AddrFromSlice(f.IP)
		s.FDB = append(s.FDB, ovFDB{
			MAC: f.HardwareAddr.String(), Dst: dst.Unmap(), Permanent: f.State&netlink.NUD_PERMANENT != 0,
		})
	}
	s.sort()
	return s, nil
}

// apply makes one change and reports whether the kernel changed: deleting what is already
// gone is not an error, as the result is the one wanted.
func (o *Overlay) apply(c op, devIndex map[string]int) (bool, error) {
	vxlan, ok := devIndex[VXLANDevice]
	if !ok && c.route == nil {
		return false, fmt.Errorf("%s: no %s device", c, VXLANDevice)
	}
	switch {
	case c.route != nil && c.kind == opReplace:
		r := c.route
		index, ok := devIndex[r.Dev]
		if !ok {
			return false, fmt.Errorf("%s: no %s device", c, r.Dev)
		}
		nr := &netlink.Route{
			Dst:       toIPNet(r.Dst),
			Gw:        r.Via.AsSlice(),
			LinkIndex: index,
			Protocol:  RouteProtocol,
			Priority:  r.Metric,
			Table:     unix.RT_TABLE_MAIN,
		}
		if r.OnLink {
			// The VTEP address is on no subnet of the device: onlink tells the kernel to take
			// it as a neighbour there all the same.
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		// Replace, not add: a route to a peer's pod range that someone else put there, with
		// another protocol, is taken over. The range is the peer's, and only nodenet knows
		// where the peer is.
		if err := o.nl.RouteReplace(nr); err != nil {
			return false, fmt.Errorf("replace route %s: %w", r, err)
		}
	case c.route != nil:
		r := c.route.raw
		if r == nil {
			r = &netlink.Route{Dst: toIPNet(c.route.Dst), Priority: c.route.Metric, Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
		}
		if err := o.nl.RouteDel(r); errors.Is(err, unix.ESRCH) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("delete route %s: %w", c.route, err)
		}
	case c.neigh != nil && c.kind == opReplace:
		mac, err := net.ParseMAC(c.neigh.MAC)
		if err != nil {
			return false, fmt.Errorf("neighbour %s: %w", c.neigh.IP, err)
		}
		n := &netlink.Neigh{LinkIndex: vxlan, IP: c.neigh.IP.AsSlice(), HardwareAddr: mac, State: netlink.NUD_PERMANENT}
		if err := o.nl.NeighSet(n); err != nil {
			return false, fmt.Errorf("replace neighbour %s: %w", c.neigh, err)
		}
	case c.neigh != nil:
		n := &netlink.Neigh{LinkIndex: vxlan, IP: c.neigh.IP.AsSlice()}
		if err := o.nl.NeighDel(n); errors.Is(err, unix.ENOENT) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("delete neighbour %s: %w", c.neigh, err)
		}
	default:
		mac, err := net.ParseMAC(c.fdb.MAC)
		if err != nil {
			return false, fmt.Errorf("fdb %s: %w", c.fdb.MAC, err)
		}
		n := &netlink.Neigh{
			LinkIndex:    vxlan,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_SELF,
			State:        netlink.NUD_PERMANENT,
			IP:           c.fdb.Dst.AsSlice(),
			HardwareAddr: mac,
		}
		if c.kind == opReplace {
			if err := o.nl.NeighSet(n); err != nil {
				return false, fmt.Errorf("replace fdb %s: %w", c.fdb, err)
			}
			return true, nil
		}
		if err := o.nl.NeighDel(n); errors.Is(err, unix.ENOENT) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("delete fdb %s: %w", c.fdb, err)
		}
	}
	return true, nil
}

// removeDevice removes the VXLAN device, which direct mode does not use. Its neighbour and FDB
// entries go with it.
func (o *Overlay) removeDevice() (int, error) {
	link, err := o.nl.LinkByName(VXLANDevice)
	if isNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", VXLANDevice, err)
	}
	if _, ok := link.(*netlink.Vxlan); !ok {
		return 0, fmt.Errorf("link %s is a %s, not a vxlan", VXLANDevice, link.Type())
	}
	if err := o.nl.LinkDel(link); err != nil {
		return 0, fmt.Errorf("remove %s: %w", VXLANDevice, err)
	}
	o.log.Info("removed vxlan device: direct mode does not use it", zap.String("device", VXLANDevice))
	return 1, nil
}
