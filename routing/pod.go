package routing

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// vethPrefix starts the name of every host-side veth nodenet creates, so reconciliation can
// tell its own veths from anyone else's.
const vethPrefix = "nn"

// PodNetwork is the plumbing of one pod interface: a veth pair from the bridge into the pod.
type PodNetwork struct {
	NetnsPath string         // e.g. /run/netns/x or /proc/123/ns/net
	IfName    string         // CNI_IFNAME inside the pod, e.g. eth0
	HostVeth  string         // host-side name, from HostVethName
	IPs       []netip.Prefix // pod addresses with prefix length
	Gateways  []netip.Prefix // default route via these, one per family
	MTU       int            // 0 = the bridge's MTU
}

// PodInterfaces are the two ends of a pod's veth, for the CNI result.
type PodInterfaces struct{ HostVeth, PodIf Interface }

// Interface is a network interface as the CNI result names it.
type Interface struct {
	Name string
	MAC  net.HardwareAddr
}

// HostVethName is the host-side veth name of a pod interface: "nn" and the first 12 hex digits of
// sha256(containerID + "/" + ifName). It is deterministic, so a retried ADD and a DEL find the
// same veth, and it fits the kernel's 15 characters.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return vethPrefix + hex.EncodeToString(sum[:])[:12]
}

func (p PodNetwork) validate() error {
	if p.NetnsPath == "" {
		return errors.New("netns path is empty")
	}
	if err := validIfName(p.IfName); err != nil {
		return fmt.Errorf("pod interface: %w", err)
	}
	if err := validIfName(p.HostVeth); err != nil {
		return fmt.Errorf("host veth: %w", err)
	}
	if len(p.IPs) == 0 {
		return errors.New("pod has no addresses")
	}
	for _, ip := range p.IPs {
		if !ip.IsValid() {
			return fmt.Errorf("pod address %s: invalid prefix", ip)
		}
	}
	for _, gw := range p.Gateways {
		if !gw.IsValid() {
			return fmt.Errorf("gateway %s: invalid prefix", gw)
		}
	}
	if p.MTU < 0 {
		return fmt.Errorf("mtu %d: must not be negative", p.MTU)
	}
	return nil
}

func (p PodNetwork) hasIPv6() bool {
	return slices.ContainsFunc(p.IPs, func(ip netip.Prefix) bool { return ip.Addr().Is6() })
}

// podNS is a pod's network namespace opened for one call, with a netlink handle inside it.
type podNS struct {
	ns ns.NetNS
	nl *netlink.Handle
}

func openPodNS(path string) (*podNS, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	// Only rtnetlink is needed; the default would also open xfrm and netfilter sockets.
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("netlink handle in %s: %w", path, err), n.Close())
	}
	return &podNS{ns: n, nl: h}, nil
}

func (p *podNS) close() error {
	p.nl.Close()
	return p.ns.Close()
}

// AttachPod creates the pod's veth pair, the pod end directly inside the pod's namespace, and
// configures both ends. A veth left by an earlier attempt at the same pod is adopted when its
// peer is in place with the pod's addresses, and replaced otherwise. On failure nothing this
// call created is left behind.
func (l *Local) AttachPod(p PodNetwork) (_ PodInterfaces, err error) {
	if err := p.validate(); err != nil {
		return PodInterfaces{}, err
	}
	br, err := l.bridge()
	if err != nil {
		return PodInterfaces{}, err
	}
	mtu := p.MTU
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}
	pod, err := openPodNS(p.NetnsPath)
	if err != nil {
		return PodInterfaces{}, err
	}
	defer func() {
		if cerr := pod.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close netns %s: %w", p.NetnsPath, cerr))
		}
	}()

	host, created, err := l.ensureVeth(p, pod, mtu)
	if err != nil {
		return PodInterfaces{}, err
	}
	ifs, err := l.configurePod(p, pod, host, br)
	if err != nil && created {
		// Deleting one end removes the pair, the pod end included.
		if derr := l.nl.LinkDel(host); derr != nil {
			err = errors.Join(err, fmt.Errorf("remove veth %s: %w", p.HostVeth, derr))
		}
	}
	return ifs, err
}

// bridge looks up the pod bridge, which Ensure creates.
func (l *Local) bridge() (netlink.Link, error) {
	br, err := l.nl.LinkByName(l.cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("get bridge %s: %w", l.cfg.Bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("link %s is a %s, not a bridge", l.cfg.Bridge, br.Type())
	}
	return br, nil
}

// ensureVeth returns the pod's host veth, adopting a matching one or creating the pair; created
// says whether this call made it.
func (l *Local) ensureVeth(p PodNetwork, pod *podNS, mtu int) (_ netlink.Link, created bool, _ error) {
	host, err := l.nl.LinkByName(p.HostVeth)
	switch {
	case err == nil:
		ok, err := l.adoptable(host, p, pod, mtu)
		if err != nil {
			return nil, false, err
		}
		if ok {
			l.log.Debug("adopted pod veth", zap.String("veth", p.HostVeth))
			return host, false, nil
		}
		// A leftover of an earlier attempt whose pod end is gone or different: start over.
		if err := l.nl.LinkDel(host); err != nil {
			return nil, false, fmt.Errorf("remove stale veth %s: %w", p.HostVeth, err)
		}
		l.log.Info("removed stale pod veth", zap.String("veth", p.HostVeth))
	case !isNotFound(err):
		return nil, false, fmt.Errorf("get veth %s: %w", p.HostVeth, err)
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = p.HostVeth
	attrs.MTU = mtu
	veth := &netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      p.IfName,
		PeerNamespace: netlink.NsFd(int(pod.ns.Fd())),
		// Set at creation, which saves a round trip and means the pod end never shows another MAC.
		PeerHardwareAddr: stableMAC(p.IPs),
		PeerTxQLen:       -1,
	}
	if err := l.nl.LinkAdd(veth); err != nil {
		return nil, false, fmt.Errorf("add veth %s (peer %s in %s): %w", p.HostVeth, p.IfName, p.NetnsPath, err)
	}
	return veth, true, nil
}

// adoptable reports whether host is a veth whose peer is the pod's interface with the wanted MTU
// and all the pod's addresses.
func (l *Local) adoptable(host netlink.Link, p PodNetwork, pod *podNS, mtu int) (bool, error) {
	if _, ok := host.(*netlink.Veth); !ok {
		return false, fmt.Errorf("link %s is a %s, not a veth", p.HostVeth, host.Type())
	}
	peer, err := pod.nl.LinkByName(p.IfName)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get %s in %s: %w", p.IfName, p.NetnsPath, err)
	}
	// A veth's parent index is its peer's ifindex; both directions must agree, as ifindexes
	// repeat across namespaces.
	if peer.Attrs().ParentIndex != host.Attrs().Index || host.Attrs().ParentIndex != peer.Attrs().Index ||
		host.Attrs().MTU != mtu || peer.Attrs().MTU != mtu {
		return false, nil
	}
	missing, err := missingAddrs(pod.nl, peer, p.IPs)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s in %s: %w", p.IfName, p.NetnsPath, err)
	}
	return len(missing) == 0, nil
}

// configurePod brings both ends of the veth to the wanted state. Every step is idempotent, so
// an adopted pair goes through the same path as a new one.
func (l *Local) configurePod(p PodNetwork, pod *podNS, host, br netlink.Link) (PodInterfaces, error) {
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := l.nl.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
			return PodInterfaces{}, fmt.Errorf("attach %s to %s: %w", p.HostVeth, l.cfg.Bridge, err)
		}
	}
	// Hairpin lets a pod reach itself through a service address that is DNATed back to it.
	if err := l.nl.LinkSetHairpin(host, true); err != nil {
		return PodInterfaces{}, fmt.Errorf("set hairpin on %s: %w", p.HostVeth, err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		if err := l.nl.LinkSetUp(host); err != nil {
			return PodInterfaces{}, fmt.Errorf("set %s up: %w", p.HostVeth, err)
		}
	}

	peer, err := pod.nl.LinkByName(p.IfName)
	if err != nil {
		return PodInterfaces{}, fmt.Errorf("get %s in %s: %w", p.IfName, p.NetnsPath, err)
	}
	if p.hasIPv6() {
		// Before the link goes up, so that its link-local address skips DAD as well.
		if err := podSysctls(pod.ns, p.IfName); err != nil {
			return PodInterfaces{}, err
		}
	}
	if peer.Attrs().Flags&net.FlagUp == 0 {
		if err := pod.nl.LinkSetUp(peer); err != nil {
			return PodInterfaces{}, fmt.Errorf("set %s up: %w", p.IfName, err)
		}
	}
	lo, err := pod.nl.LinkByName("lo")
	if err != nil {
		return PodInterfaces{}, fmt.Errorf("get lo in %s: %w", p.NetnsPath, err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := pod.nl.LinkSetUp(lo); err != nil {
			return PodInterfaces{}, fmt.Errorf("set lo up: %w", err)
		}
	}
	for _, ip := range p.IPs {
		if err := pod.nl.AddrReplace(peer, netlinkAddr(ip)); err != nil {
			return PodInterfaces{}, fmt.Errorf("add address %s to %s: %w", ip, p.IfName, err)
		}
	}
	// Routes after the link is up: the kernel refuses a gateway it cannot reach yet.
	for _, gw := range p.Gateways {
		r := &netlink.Route{LinkIndex: peer.Attrs().Index, Dst: defaultDst(gw.Addr()), Gw: gw.Addr().AsSlice()}
		if err := pod.nl.RouteReplace(r); err != nil {
			return PodInterfaces{}, fmt.Errorf("add default route via %s: %w", gw.Addr(), err)
		}
	}

	links, down, err := waitOperUp([]linkRef{
		{h: l.nl, index: host.Attrs().Index, name: p.HostVeth},
		{h: pod.nl, index: peer.Attrs().Index, name: p.IfName},
		{h: l.nl, index: br.Attrs().Index, name: l.cfg.Bridge},
	})
	if err != nil {
		return PodInterfaces{}, err
	}
	if len(down) > 0 {
		l.log.Warn("pod links not up yet, the pod's first packets may be lost",
			zap.String("veth", p.HostVeth), zap.Strings("down", down))
	}
	l.log.Debug("attached pod", zap.String("veth", p.HostVeth), zap.String("netns", p.NetnsPath),
		zap.Stringers("ips", p.IPs))
	return PodInterfaces{
		// The host end's MAC is the kernel's choice, known only once the veth exists.
		HostVeth: Interface{Name: p.HostVeth, MAC: links[0].Attrs().HardwareAddr},
		PodIf:    Interface{Name: p.IfName, MAC: links[1].Attrs().HardwareAddr},
	}, nil
}

// operUpTimeout bounds waitOperUp. The kernel defers link events it does not consider urgent
// for up to a second, so this leaves room for one such delay.
const operUpTimeout = 2 * time.Second

// linkRef names a link by index in the namespace of a handle.
type linkRef struct {
	h     *netlink.Handle
	index int
	name  string
}

// waitOperUp waits until the links are operationally up and returns them as last read, with
// the names of those still down at the deadline.
//
// The kernel turns carriers on at once but activates a link's transmit queue later, from its
// linkwatch worker, and drops what the link sends until then. The first pod's port turns the
// bridge's carrier on, and the bridge is only activated in a linkwatch run after the veth's:
// without this wait the node's reply to a new pod's first ARP request was dropped in about half
// the attempts here, and the pod stalled for a second, until its ARP retry. Linkwatch sets the
// operational state in the same step as it activates the queue, so seeing it up means the link
// carries traffic. A link still down at the deadline is not an error: it comes up by itself.
func waitOperUp(refs []linkRef) (links []netlink.Link, down []string, _ error) {
	deadline := time.Now().Add(operUpTimeout)
	delay := 50 * time.Microsecond
	links = make([]netlink.Link, len(refs))
	for {
		down = nil
		for i, r := range refs {
			link, err := r.h.LinkByIndex(r.index)
			if err != nil {
				return nil, nil, fmt.Errorf("get %s: %w", r.name, err)
			}
			links[i] = link
			if link.Attrs().OperState != netlink.OperUp {
				down = append(down, r.name)
			}
		}
		if len(down) == 0 || time.Now().After(deadline) {
			return links, down, nil
		}
		time.Sleep(delay)
		delay = min(2*delay, 10*time.Millisecond)
	}
}

// podSysctls turns off router advertisements and DAD on the pod's interface: pods take their
// routes from AttachPod, and their addresses are unique by allocation. /proc/sys has no
// handle-based API, so this is the one place that switches a thread into the pod's namespace.
func podSysctls(pod ns.NetNS, ifName string) error {
	return pod.Do(func(ns.NetNS) error {
		for _, s := range []string{"accept_ra", "accept_dad"} {
			if err := ensureSysctl("net/ipv6/conf/"+ifName+"/"+s, "0"); err != nil {
				return err
			}
		}
		return nil
	})
}

// missingAddrs lists the wanted addresses the link does not carry.
func missingAddrs(h *netlink.Handle, link netlink.Link, want []netip.Prefix) ([]netip.Prefix, error) {
	have, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	var missing []netip.Prefix
	for _, w := range want {
		if !slices.ContainsFunc(have, func(a netlink.Addr) bool { return fromIPNet(a.IPNet) == w }) {
			missing = append(missing, w)
		}
	}
	return missing, nil
}

// DetachPod deletes a pod's veth pair. A veth that is already gone is not an error: the pod's
// namespace may have been removed first, which takes the pair with it.
func (l *Local) DetachPod(hostVeth string) error {
	if err := validIfName(hostVeth); err != nil {
		return fmt.Errorf("host veth: %w", err)
	}
	link, err := l.nl.LinkByName(hostVeth)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get veth %s: %w", hostVeth, err)
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return fmt.Errorf("link %s is a %s, not a veth", hostVeth, link.Type())
	}
	nl, done, err := l.ownHandle()
	if err != nil {
		return err
	}
	defer done()
	if err := nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete veth %s: %w", hostVeth, err)
	}
	l.log.Debug("detached pod", zap.String("veth", hostVeth))
	return nil
}

// ownHandle returns a netlink handle in the node's namespace that no other call shares, when
// the node namespace is known, else the shared one; done releases it.
func (l *Local) ownHandle() (*netlink.Handle, func(), error) {
	if l.cfg.NodeNetns == "" {
		return l.nl, func() {}, nil
	}
	nsh, err := netns.GetFromPath(l.cfg.NodeNetns)
	if err != nil {
		return nil, nil, fmt.Errorf("open node netns %s: %w", l.cfg.NodeNetns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, nil, fmt.Errorf("netlink handle in %s: %w", l.cfg.NodeNetns, err)
	}
	return h, h.Close, nil
}

// CheckPod reports what differs from the wanted plumbing of a pod, every problem it finds.
func (l *Local) CheckPod(p PodNetwork) (err error) {
	if err := p.validate(); err != nil {
		return err
	}
	br, err := l.bridge()
	if err != nil {
		return err
	}
	host, err := l.nl.LinkByName(p.HostVeth)
	if isNotFound(err) {
		return fmt.Errorf("veth %s missing", p.HostVeth)
	}
	if err != nil {
		return fmt.Errorf("get veth %s: %w", p.HostVeth, err)
	}
	if _, ok := host.(*netlink.Veth); !ok {
		return fmt.Errorf("link %s is a %s, not a veth", p.HostVeth, host.Type())
	}
	var errs []error
	if host.Attrs().MasterIndex != br.Attrs().Index {
		errs = append(errs, fmt.Errorf("veth %s not on bridge %s", p.HostVeth, l.cfg.Bridge))
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("veth %s down", p.HostVeth))
	}

	pod, err := openPodNS(p.NetnsPath)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer func() {
		if cerr := pod.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close netns %s: %w", p.NetnsPath, cerr))
		}
	}()
	peer, err := pod.nl.LinkByName(p.IfName)
	if isNotFound(err) {
		return errors.Join(append(errs, fmt.Errorf("pod interface %s missing in %s", p.IfName, p.NetnsPath))...)
	}
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("get %s in %s: %w", p.IfName, p.NetnsPath, err))...)
	}
	if peer.Attrs().ParentIndex != host.Attrs().Index {
		errs = append(errs, fmt.Errorf("pod interface %s is not the peer of veth %s", p.IfName, p.HostVeth))
	}
	if peer.Attrs().Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("pod interface %s down", p.IfName))
	}
	if p.MTU != 0 && peer.Attrs().MTU != p.MTU {
		errs = append(errs, fmt.Errorf("pod interface %s mtu %d, want %d", p.IfName, peer.Attrs().MTU, p.MTU))
	}
	missing, err := missingAddrs(pod.nl, peer, p.IPs)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list addresses of %s: %w", p.IfName, err))...)
	}
	for _, m := range missing {
		errs = append(errs, fmt.Errorf("address %s missing on %s", m, p.IfName))
	}
	for _, gw := range p.Gateways {
		ok, err := hasDefaultRoute(pod.nl, peer, gw.Addr())
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("list routes of %s: %w", p.IfName, err))...)
		}
		if !ok {
			errs = append(errs, fmt.Errorf("default route via %s missing on %s", gw.Addr(), p.IfName))
		}
	}
	return errors.Join(errs...)
}

func hasDefaultRoute(h *netlink.Handle, link netlink.Link, gw netip.Addr) (bool, error) {
	routes, err := dump(func() ([]netlink.Route, error) { return h.RouteList(link, family(gw)) })
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(routes, func(r netlink.Route) bool {
		via, ok := netip.AddrFromSlice(r.Gw)
		return isDefaultRoute(r) && ok && via.Unmap() == gw
	}), nil
}

// PodVeths lists the host veths attached to the bridge that nodenet created, for
// reconciliation against the pods that should exist. Without a bridge there are none.
func (l *Local) PodVeths() ([]string, error) {
	br, err := l.nl.LinkByName(l.cfg.Bridge)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get bridge %s: %w", l.cfg.Bridge, err)
	}
	links, err := dump(l.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var names []string
	for _, link := range links {
		a := link.Attrs()
		if _, ok := link.(*netlink.Veth); ok && a.MasterIndex == br.Attrs().Index && strings.HasPrefix(a.Name, vethPrefix) {
			names = append(names, a.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}
