package routing

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Overlay modes: how pods reach the pods of another node.
const (
	// ModeAuto routes directly to peers on a shared L2 segment and over VXLAN to the rest.
	ModeAuto = "auto"
	// ModeDirect routes every peer's pod ranges via its underlay address (flannel host-gw).
	ModeDirect = "direct"
	// ModeVXLAN sends every peer's pod traffic through the VXLAN device.
	ModeVXLAN = "vxlan"
)

const (
	// VXLANDevice is the overlay's VXLAN device, part of the public contract.
	VXLANDevice = "nodenet-vxlan"
	// RouteProtocol marks the routes the overlay installs (rtm_protocol), so that it only ever
	// removes its own: Sync treats every route of this protocol in the main table as its own.
	// 0x4e is 'N'; iproute2's rt_protos and the kernel's rtnetlink.h leave it unassigned.
	RouteProtocol netlink.RouteProtocol = 0x4e
	// DefaultVNI is the VXLAN network identifier when the config leaves it out.
	DefaultVNI = 1
	// DefaultVXLANPort is flannel's VXLAN port, so that firewall rules written for flannel fit.
	// (The IANA port 4789 would serve as well; the two are incompatible on the wire only
	// between nodes that disagree.)
	DefaultVXLANPort = 8472
)

// VXLAN encapsulation overhead: outer IP header, UDP 8, VXLAN 8 and the inner Ethernet header 14.
const (
	vxlanOverhead4 = 20 + 8 + 8 + 14
	vxlanOverhead6 = 40 + 8 + 8 + 14
)

// maxVNI is the largest 24-bit VXLAN network identifier.
const maxVNI = 1<<24 - 1

// OverlayConfig is the cross-node part of the pod network.
type OverlayConfig struct {
	Mode         string         // "auto" | "direct" | "vxlan"; "" = auto
	LocalAddress netip.Addr     // this node's underlay address (its Node InternalIP)
	PodCIDRs     []netip.Prefix // this node's pod ranges; the network address of each is a VTEP address
	VNI          int            // 0 = DefaultVNI
	Port         int            // UDP port; 0 = DefaultVXLANPort
}

// Peer is another node as the API server describes it.
type Peer struct {
	Name     string
	Address  netip.Addr     // the peer's underlay address (its Node InternalIP)
	PodCIDRs []netip.Prefix // the peer's pod ranges
	// VTEPMAC is the MAC of the peer's nodenet-vxlan device, published by the peer; nil while
	// the peer has not published it, and then it cannot be reached over VXLAN.
	VTEPMAC net.HardwareAddr
}

// VTEP is what this node publishes and what its pods need: the VXLAN device's MAC (nil in
// direct mode, which has no device) and the MTU pods must use.
type VTEP struct {
	MAC net.HardwareAddr
	MTU int
}

// SyncResult is the state Sync reached, by peer name, each list sorted. In auto mode a peer
// can be in both Direct and VXLAN: a pod range of a family its underlay address does not have
// can only go over VXLAN.
type SyncResult struct {
	Direct  []string // peers whose pod ranges are routed directly, or partly
	VXLAN   []string // peers whose pod ranges are routed over VXLAN, or partly
	Skipped []string // peers that cannot be routed yet: no VTEP MAC published, or no pod ranges
	// Rejected are peers that are not routed because of an error Sync returned: their data
	// conflicts with this node or another peer, or the kernel refused a change for them.
	Rejected []string
	Changes  int // kernel changes made: links, addresses, routes, neighbour and FDB entries
}

// Overlay owns the routes to other nodes' pods, and the VXLAN device that carries them where
// nodes do not share an L2 segment, in one network namespace.
type Overlay struct {
	cfg OverlayConfig
	nl  *netlink.Handle
	log *zap.Logger

	// mu serializes Ensure and Sync: both reconcile the VXLAN device.
	mu sync.Mutex
}

// NewOverlay checks cfg and builds an Overlay. nl works in the node's network namespace; no
// other per-namespace state is used, so the Overlay can be driven from any thread.
func NewOverlay(cfg OverlayConfig, nl *netlink.Handle, log *zap.Logger) (*Overlay, error) {
	if nl == nil {
		return nil, errors.New("routing: netlink handle is required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := OverlayConfig{Mode: cfg.Mode, VNI: cfg.VNI, Port: cfg.Port}
	switch c.Mode {
	case "":
		c.Mode = ModeAuto
	case ModeAuto, ModeDirect, ModeVXLAN:
	default:
		return nil, fmt.Errorf("mode %q: want %s, %s or %s", cfg.Mode, ModeAuto, ModeDirect, ModeVXLAN)
	}
	if !cfg.LocalAddress.IsValid() || cfg.LocalAddress.IsUnspecified() {
		return nil, fmt.Errorf("local address %q: want this node's underlay address", cfg.LocalAddress)
	}
	c.LocalAddress = cfg.LocalAddress.Unmap()
	if len(cfg.PodCIDRs) == 0 {
		return nil, errors.New("pod CIDRs: at least one is required")
	}
	var err error
	if c.PodCIDRs, err = masked("pod CIDR", cfg.PodCIDRs); err != nil {
		return nil, err
	}
	if c.VNI == 0 {
		c.VNI = DefaultVNI
	}
	if c.VNI < 0 || c.VNI > maxVNI {
		return nil, fmt.Errorf("vni %d: want 1 to %d", cfg.VNI, maxVNI)
	}
	if c.Port == 0 {
		c.Port = DefaultVXLANPort
	}
	if c.Port < 0 || c.Port > 65535 {
		return nil, fmt.Errorf("port %d: want 1 to 65535", cfg.Port)
	}
	return &Overlay{cfg: c, nl: nl, log: log.Named("routing").Named("overlay")}, nil
}

// Ensure brings the VXLAN device to the configured state when the mode may need it (vxlan,
// auto), adopting one that is there, and returns what this node publishes and the pod MTU.
// In direct mode it changes nothing: a device left from another mode goes in Sync, once the
// routes no longer use it.
func (o *Overlay) Ensure() (VTEP, error) {
	o.mu.Lock()
	defer o.mu.Unlock()

	up, _, err := o.uplink()
	if err != nil {
		return VTEP{}, err
	}
	if o.cfg.Mode == ModeDirect {
		return VTEP{MTU: up.Attrs().MTU}, nil
	}
	dev, _, err := o.ensureDevice(up)
	if err != nil {
		return VTEP{}, err
	}
	// Pods use the VXLAN MTU even in auto mode, where some peers are direct: a pod's MTU is one
	// number for all destinations.
	return VTEP{MAC: dev.Attrs().HardwareAddr, MTU: dev.Attrs().MTU}, nil
}

// uplink is the link that carries the local address, with the subnets of its addresses in
// that address's family: the L2 segments this node shares with others.
func (o *Overlay) uplink() (netlink.Link, []netip.Prefix, error) {
	local := o.cfg.LocalAddress
	addrs, err := dump(func() ([]netlink.Addr, error) { return o.nl.AddrList(nil, family(local)) })
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses: %w", err)
	}
	index := 0
	for _, a := range addrs {
		if fromIPNet(a.IPNet).Addr() == local {
			index = a.LinkIndex
			break
		}
	}
	if index == 0 {
		return nil, nil, fmt.Errorf("local address %s is on no link", local)
	}
	var subnets []netip.Prefix
	for _, a := range addrs {
		if a.LinkIndex == index {
			subnets = append(subnets, fromIPNet(a.IPNet).Masked())
		}
	}
	link, err := o.nl.LinkByIndex(index)
	if err != nil {
		return nil, nil, fmt.Errorf("get uplink %d: %w", index, err)
	}
	return link, subnets, nil
}

// vxlanMTU is the largest inner packet that fits the uplink once encapsulated.
func vxlanMTU(uplinkMTU int, underlay netip.Addr) int {
	if underlay.Is4() {
		return uplinkMTU - vxlanOverhead4
	}
	return uplinkMTU - vxlanOverhead6
}

// vtepMAC is the VXLAN device's MAC, derived from the underlay address so that a recreated
// device, or one on a restarted node, keeps it and the peers' FDB entries stay right. 0e is a
// locally administered unicast first byte, 4e ('N') sets these apart from the pod and bridge
// MACs (0a:58). An IPv4 address fills the rest, so nodes never collide; an IPv6 address does
// not fit, and a hash spreads its distinguishing bytes, which may sit anywhere in it.
func vtepMAC(underlay netip.Addr) net.HardwareAddr {
	var b []byte
	if underlay.Is4() {
		a := underlay.As4()
		b = a[:]
	} else {
		sum := sha256.Sum256(underlay.AsSlice())
		b = sum[:4]
	}
	return append(net.HardwareAddr{0x0e, 0x4e}, b...)
}

// vtepAddr is the VTEP address that stands for a pod range in the overlay: its network
// address, as flannel does it. No pod gets it (allocation starts above it), so it is free to
// name the node that owns the range.
func vtepAddr(p netip.Prefix) netip.Addr {
	return p.Masked().Addr()
}

// ensureDevice creates the VXLAN device, or adopts the one that is there and corrects what can
// be corrected in place. It returns the device as the kernel has it and the number of changes.
func (o *Overlay) ensureDevice(up netlink.Link) (netlink.Link, int, error) {
	want := o.wantDevice(up)
	changes := 0
	link, err := o.nl.LinkByName(VXLANDevice)
	switch {
	case isNotFound(err):
		link = nil
	case err != nil:
		return nil, 0, fmt.Errorf("get %s: %w", VXLANDevice, err)
	default:
		have, ok := link.(*netlink.Vxlan)
		if !ok {
			return nil, 0, fmt.Errorf("link %s is a %s, not a vxlan", VXLANDevice, link.Type())
		}
		// VNI, port, local address and lower device are fixed at creation: the kernel refuses
		// to change most of them, so a device with other ones is made anew.
		if why := vxlanDiffers(have, want); why != "" {
			if err := o.nl.LinkDel(have); err != nil {
				return nil, 0, fmt.Errorf("remove %s: %w", VXLANDevice, err)
			}
			changes++
			o.log.Info("removed vxlan device to recreate it", zap.String("device", VXLANDevice), zap.String("reason", why))
			link = nil
		}
	}
	if link == nil {
		if err := o.nl.LinkAdd(want); err != nil {
			return nil, changes, fmt.Errorf("add %s: %w", VXLANDevice, err)
		}
		changes++
		o.log.Info("created vxlan device", zap.String("device", VXLANDevice), zap.Int("vni", want.VxlanId),
			zap.Int("port", want.Port), zap.Stringer("local", o.cfg.LocalAddress), zap.String("dev", up.Attrs().Name),
			zap.Int("mtu", want.MTU), zap.Stringer("mac", want.HardwareAddr))
		link = want
	} else {
		n, err := o.correctDevice(link, want)
		changes += n
		if err != nil {
			return nil, changes, err
		}
	}
	n, err := o.ensureVTEPAddrs(link)
	changes += n
	if err != nil {
		return nil, changes, err
	}
	// Read back what the kernel has, rather than what was asked for.
	got, err := o.nl.LinkByIndex(link.Attrs().Index)
	if err != nil {
		return nil, changes, fmt.Errorf("get %s: %w", VXLANDevice, err)
	}
	return got, changes, nil
}

func (o *Overlay) wantDevice(up netlink.Link) *netlink.Vxlan {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = VXLANDevice
	attrs.MTU = vxlanMTU(up.Attrs().MTU, o.cfg.LocalAddress)
	attrs.Flags = net.FlagUp
	// Set at creation, so the MAC counts as set by the user and stays what it is.
	attrs.HardwareAddr = vtepMAC(o.cfg.LocalAddress)
	return &netlink.Vxlan{
		LinkAttrs:    attrs,
		VxlanId:      o.cfg.VNI,
		VtepDevIndex: up.Attrs().Index,
		SrcAddr:      o.cfg.LocalAddress.AsSlice(),
		Port:         o.cfg.Port,
		// Peers are known from the API server, so the FDB is written, never learned: learning
		// would let any packet with a forged source MAC redirect a peer's traffic.
		Learning: false,
	}
}

// vxlanDiffers says what of the fixed attributes of have differs from want, "" when nothing.
func vxlanDiffers(have, want *netlink.Vxlan) string {
	src, _ := netip.AddrFromSlice(have.SrcAddr)
	switch {
	case have.VxlanId != want.VxlanId:
		return fmt.Sprintf("vni %d, want %d", have.VxlanId, want.VxlanId)
	case have.Port != want.Port:
		return fmt.Sprintf("port %d, want %d", have.Port, want.Port)
	case !have.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("local %s, want %s", src.Unmap(), want.SrcAddr)
	case have.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("dev index %d, want %d", have.VtepDevIndex, want.VtepDevIndex)
	case have.Learning:
		return "learning on"
	case have.FlowBased || have.GBP || len(have.Group) > 0 && !have.Group.IsUnspecified():
		return "external, gbp or group mode"
	}
	return ""
}

// correctDevice sets the MTU, MAC and state of an adopted device where they differ, without
// taking it down.
func (o *Overlay) correctDevice(link netlink.Link, want *netlink.Vxlan) (int, error) {
	a := link.Attrs()
	changes := 0
	if a.MTU != want.MTU {
		if err := o.nl.LinkSetMTU(link, want.MTU); err != nil {
			return changes, fmt.Errorf("set mtu %d on %s: %w", want.MTU, VXLANDevice, err)
		}
		changes++
		o.log.Info("set vxlan mtu", zap.Int("from", a.MTU), zap.Int("to", want.MTU))
	}
	if !slices.Equal(a.HardwareAddr, want.HardwareAddr) {
		if err := o.nl.LinkSetHardwareAddr(link, want.HardwareAddr); err != nil {
			return changes, fmt.Errorf("set mac %s on %s: %w", want.HardwareAddr, VXLANDevice, err)
		}
		changes++
		o.log.Info("set vxlan mac", zap.Stringer("from", a.HardwareAddr), zap.Stringer("to", want.HardwareAddr))
	}
	if a.Flags&net.FlagUp == 0 {
		if err := o.nl.LinkSetUp(link); err != nil {
			return changes, fmt.Errorf("set %s up: %w", VXLANDevice, err)
		}
		changes++
	}
	return changes, nil
}

// ensureVTEPAddrs makes the device carry exactly this node's VTEP addresses, as /32 or /128.
// Traffic the node itself sends to a peer's pods takes one as its source, and the peer's
// replies come back to it. The kernel's IPv6 link-local address stays.
func (o *Overlay) ensureVTEPAddrs(dev netlink.Link) (int, error) {
	have, err := dump(func() ([]netlink.Addr, error) { return o.nl.AddrList(dev, netlink.FAMILY_ALL) })
	if err != nil {
		return 0, fmt.Errorf("list addresses of %s: %w", VXLANDevice, err)
	}
	var want []netip.Prefix
	for _, p := range o.cfg.PodCIDRs {
		a := vtepAddr(p)
		want = append(want, netip.PrefixFrom(a, a.BitLen()))
	}
	changes := 0
	for _, w := range want {
		if slices.ContainsFunc(have, func(a netlink.Addr) bool { return fromIPNet(a.IPNet) == w }) {
			continue
		}
		a := netlinkAddr(w)
		if w.Addr().Is6() {
			// The address is the host itself; a prefix route for a /128 would only repeat the
			// local route.
			a.Flags |= unix.IFA_F_NOPREFIXROUTE
		}
		if err := o.nl.AddrAdd(dev, a); err != nil {
			return changes, fmt.Errorf("add address %s to %s: %w", w, VXLANDevice, err)
		}
		changes++
		o.log.Info("added vtep address", zap.Stringer("address", w))
	}
	for _, a := range have {
		p := fromIPNet(a.IPNet)
		if slices.Contains(want, p) || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if err := o.nl.AddrDel(dev, &netlink.Addr{IPNet: toIPNet(p)}); err != nil {
			return changes, fmt.Errorf("remove address %s from %s: %w", p, VXLANDevice, err)
		}
		changes++
		o.log.Info("removed stale vtep address", zap.Stringer("address", p))
	}
	return changes, nil
}
