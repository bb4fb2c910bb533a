// Package routing puts the node's pod network into the kernel: the pod bridge and its gateway
// addresses, forwarding, masquerade of traffic that leaves the cluster, and the veth pair of
// each pod. Every operation reconciles towards a desired state and adopts what is already there,
// so a restarted daemon takes over without dropping traffic.
package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
)

// defaultMTU is the bridge MTU when there is no uplink to take it from.
const defaultMTU = 1500

// LocalConfig is the node-local network: the pod bridge and masquerade.
type LocalConfig struct {
	Bridge       string         // e.g. "nodenet0"
	MTU          int            // 0 = the MTU of the uplink (the link of the default route; IPv4 first, then IPv6; 1500 when there is none)
	Gateways     []netip.Prefix // addresses the bridge carries, e.g. 10.244.1.1/24, fd00:10:244:1::1/64
	PodCIDRs     []netip.Prefix // this node's pod ranges (masquerade sources)
	ClusterCIDRs []netip.Prefix // traffic to these is never masqueraded
	// NodeNetns, when set, is the node's network namespace (e.g. /proc/self/ns/net). DetachPod
	// then deletes through a netlink socket of its own: a veth delete keeps the kernel busy for
	// 15-25 ms, and on the shared handle every concurrent DEL would queue behind the others.
	NodeNetns string
}

// Local owns the node-local pod network of one network namespace.
type Local struct {
	cfg LocalConfig
	nl  *netlink.Handle
	nft *nftables.Conn
	log *zap.Logger

	// mu serializes Ensure. The pod methods do not take it: each works on its own veth, and the
	// kernel orders their changes to the bridge.
	mu sync.Mutex
	// pinned is the ifindex of the bridge whose MAC this Local has made explicit (guarded by
	// mu). Setting a MAC, even the same one, flushes the bridge's neighbour table, so it is done
	// at most once per bridge.
	pinned int
}

// Bridge is what pods need to know about the bridge.
type Bridge struct {
	Name     string
	Index    int
	MAC      net.HardwareAddr
	MTU      int
	Gateways []netip.Prefix
}

// NewLocal checks cfg and builds a Local. nl and nft work in the node's network namespace. The
// forwarding sysctls are written through /proc/sys of the thread that calls Ensure, so Ensure
// must run in the node's namespace too.
func NewLocal(cfg LocalConfig, nl *netlink.Handle, nft *nftables.Conn, log *zap.Logger) (*Local, error) {
	if nl == nil || nft == nil {
		return nil, errors.New("routing: netlink handle and nftables conn are required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if err := validIfName(cfg.Bridge); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	if cfg.MTU < 0 {
		return nil, fmt.Errorf("mtu %d: must not be negative", cfg.MTU)
	}
	if len(cfg.Gateways) == 0 {
		return nil, errors.New("gateways: at least one is required")
	}
	c := LocalConfig{Bridge: cfg.Bridge, MTU: cfg.MTU, NodeNetns: cfg.NodeNetns}
	for _, g := range cfg.Gateways {
		if !g.IsValid() || g.Addr() == g.Masked().Addr() {
			return nil, fmt.Errorf("gateway %s: want a host address with a prefix length", g)
		}
		c.Gateways = append(c.Gateways, g)
	}
	var err error
	if c.PodCIDRs, err = masked("pod CIDR", cfg.PodCIDRs); err != nil {
		return nil, err
	}
	if c.ClusterCIDRs, err = masked("cluster CIDR", cfg.ClusterCIDRs); err != nil {
		return nil, err
	}
	return &Local{cfg: c, nl: nl, nft: nft, log: log.Named("routing")}, nil
}

func masked(what string, ps []netip.Prefix) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("%s %s: invalid prefix", what, p)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Ensure brings the bridge, its addresses, forwarding and masquerade to the configured state,
// adopting what exists: an existing bridge is never recreated, so pods keep their traffic
// across a daemon restart. It returns what pods need to know about the bridge.
func (l *Local) Ensure() (Bridge, error) {
	l.mu.Lock()
	defer l.mu.Unlock()

	mtu, err := l.mtu()
	if err != nil {
		return Bridge{}, err
	}
	br, err := l.ensureBridge(mtu)
	if err != nil {
		return Bridge{}, err
	}
	if err := l.ensureGateways(br); err != nil {
		return Bridge{}, err
	}
	if err := l.ensureForwarding(); err != nil {
		return Bridge{}, err
	}
	if err := l.ensureMasquerade(); err != nil {
		return Bridge{}, err
	}
	// Read back what the kernel has, rather than what was asked for.
	link, err := l.nl.LinkByIndex(br.Attrs().Index)
	if err != nil {
		return Bridge{}, fmt.Errorf("get bridge %s: %w", l.cfg.Bridge, err)
	}
	a := link.Attrs()
	return Bridge{
		Name:     a.Name,
		Index:    a.Index,
		MAC:      a.HardwareAddr,
		MTU:      a.MTU,
		Gateways: slices.Clone(l.cfg.Gateways),
	}, nil
}

// mtu is the configured MTU, else the MTU of the link the default route leaves through.
func (l *Local) mtu() (int, error) {
	if l.cfg.MTU != 0 {
		return l.cfg.MTU, nil
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := dump(func() ([]netlink.Route, error) { return l.nl.RouteList(nil, fam) })
		if err != nil {
			return 0, fmt.Errorf("list routes: %w", err)
		}
		var best *netlink.Route
		for i, r := range routes {
			if isDefaultRoute(r) && uplinkIndex(r) != 0 && (best == nil || r.Priority < best.Priority) {
				best = &routes[i]
			}
		}
		if best == nil {
			continue
		}
		link, err := l.nl.LinkByIndex(uplinkIndex(*best))
		if err != nil {
			return 0, fmt.Errorf("get uplink %d: %w", uplinkIndex(*best), err)
		}
		return link.Attrs().MTU, nil
	}
	return defaultMTU, nil
}

// uplinkIndex is the link a route leaves through, the first hop's for a multipath route; 0 for
// routes without one (blackhole, unreachable).
func uplinkIndex(r netlink.Route) int {
	if r.LinkIndex == 0 && len(r.MultiPath) > 0 {
		return r.MultiPath[0].LinkIndex
	}
	return r.LinkIndex
}

// ensureBridge creates the bridge, or adopts the one that is there and corrects its MTU, MAC and
// state without taking it down.
func (l *Local) ensureBridge(mtu int) (netlink.Link, error) {
	link, err := l.nl.LinkByName(l.cfg.Bridge)
	if isNotFound(err) {
		return l.createBridge(mtu)
	}
	if err != nil {
		return nil, fmt.Errorf("get bridge %s: %w", l.cfg.Bridge, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("link %s is a %s, not a bridge", l.cfg.Bridge, link.Type())
	}
	if err := l.pinMAC(link); err != nil {
		return nil, err
	}
	a := link.Attrs()
	if a.MTU != mtu {
		if err := l.nl.LinkSetMTU(link, mtu); err != nil {
			return nil, fmt.Errorf("set mtu %d on bridge %s: %w", mtu, l.cfg.Bridge, err)
		}
		l.log.Info("set bridge mtu", zap.String("bridge", l.cfg.Bridge), zap.Int("from", a.MTU), zap.Int("to", mtu))
	}
	if a.Flags&net.FlagUp == 0 {
		if err := l.nl.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", l.cfg.Bridge, err)
		}
	}
	return link, nil
}

func (l *Local) createBridge(mtu int) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = l.cfg.Bridge
	attrs.MTU = mtu
	attrs.Flags = net.FlagUp
	// A MAC given at creation counts as set by the user: the bridge keeps it instead of taking
	// the lowest MAC of its ports, so the gateway's MAC does not change as pods come and go.
	attrs.HardwareAddr = stableMAC(l.cfg.Gateways)
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := l.nl.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add bridge %s: %w", l.cfg.Bridge, err)
	}
	l.pinned = br.Index
	l.log.Info("created bridge", zap.String("bridge", l.cfg.Bridge), zap.Int("mtu", mtu),
		zap.Stringer("mac", attrs.HardwareAddr))
	return br, nil
}

// pinMAC makes the current MAC of an adopted bridge explicit, keeping its value. The kernel does
// not report whether a bridge's MAC was set, but one that was not follows the lowest MAC of its
// ports: so a bridge counts as unpinned while it has no ports or carries the MAC of one of them.
func (l *Local) pinMAC(br netlink.Link) error {
	a := br.Attrs()
	if l.pinned == a.Index {
		return nil
	}
	links, err := dump(l.nl.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	ports, follows := 0, false
	for _, link := range links {
		if link.Attrs().MasterIndex != a.Index {
			continue
		}
		ports++
		follows = follows || slices.Equal(link.Attrs().HardwareAddr, a.HardwareAddr)
	}
	if ports == 0 || follows {
		if err := l.nl.LinkSetHardwareAddr(br, a.HardwareAddr); err != nil {
			return fmt.Errorf("pin mac of bridge %s: %w", a.Name, err)
		}
		l.log.Info("pinned bridge mac", zap.String("bridge", a.Name), zap.Stringer("mac", a.HardwareAddr))
	}
	l.pinned = a.Index
	return nil
}

// ensureGateways makes the bridge carry exactly the gateway addresses. Only addresses inside our
// own ranges (cluster, pod and gateway prefixes) count as stale: anything else on the bridge,
// such as link-local addresses or another component's, is left alone.
func (l *Local) ensureGateways(br netlink.Link) error {
	have, err := dump(func() ([]netlink.Addr, error) { return l.nl.AddrList(br, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.cfg.Bridge, err)
	}
	present := map[netip.Prefix]bool{}
	var stale []netip.Prefix
	for _, a := range have {
		p := fromIPNet(a.IPNet)
		switch {
		case slices.Contains(l.cfg.Gateways, p):
			present[p] = true
		case l.owns(p.Addr()):
			stale = append(stale, p)
		}
	}
	for _, g := range l.cfg.Gateways {
		if present[g] {
			continue
		}
		// The kernel knows an IPv6 address by the address alone, so the same address with an old
		// prefix length has to go first or the add is refused.
		for i, s := range stale {
			if s.Addr() == g.Addr() {
				if err := l.delGateway(br, s); err != nil {
					return err
				}
				stale = slices.Delete(stale, i, i+1)
				break
			}
		}
		if err := l.nl.AddrAdd(br, netlinkAddr(g)); err != nil {
			return fmt.Errorf("add address %s to %s: %w", g, l.cfg.Bridge, err)
		}
		l.log.Info("added gateway address", zap.String("bridge", l.cfg.Bridge), zap.Stringer("address", g))
	}
	for _, s := range stale {
		if err := l.delGateway(br, s); err != nil {
			return err
		}
	}
	return nil
}

func (l *Local) delGateway(br netlink.Link, p netip.Prefix) error {
	if err := l.nl.AddrDel(br, &netlink.Addr{IPNet: toIPNet(p)}); err != nil {
		return fmt.Errorf("remove address %s from %s: %w", p, l.cfg.Bridge, err)
	}
	l.log.Info("removed stale gateway address", zap.String("bridge", l.cfg.Bridge), zap.Stringer("address", p))
	return nil
}

// owns reports whether an address lies in a range this package manages.
func (l *Local) owns(a netip.Addr) bool {
	for _, ps := range [][]netip.Prefix{l.cfg.ClusterCIDRs, l.cfg.PodCIDRs, l.cfg.Gateways} {
		for _, p := range ps {
			if p.Masked().Contains(a) {
				return true
			}
		}
	}
	return false
}

// ensureForwarding turns on forwarding in the namespace of the calling thread: IPv4 always,
// IPv6 when the node has an IPv6 range.
func (l *Local) ensureForwarding() error {
	if err := ensureSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if !l.hasIPv6() {
		return nil
	}
	return ensureSysctl("net/ipv6/conf/all/forwarding", "1")
}

func (l *Local) hasIPv6() bool {
	for _, ps := range [][]netip.Prefix{l.cfg.Gateways, l.cfg.PodCIDRs} {
		for _, p := range ps {
			if p.Addr().Is6() {
				return true
			}
		}
	}
	return false
}
