package cniexec_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/nodenet/nodenet/cniexec"
	"github.com/nodenet/nodenet/ipam"
	"github.com/nodenet/nodenet/routing"
)

var (
	_ cniexec.Allocator = (*fakeAllocator)(nil)
	_ cniexec.Plumber   = (*fakePlumber)(nil)
)

// fakeAllocator is an in-memory ipam.Allocator over one IPv4 range. Like the real one it keeps
// the first host address for the gateway and never hands out the network or broadcast address;
// it hands out the lowest free address, so a test knows which address the next ADD gets.
type fakeAllocator struct {
	rng netip.Prefix
	gw  netip.Prefix

	mu      sync.Mutex
	allocs  map[string]ipam.Allocation // by containerID/ifName
	created int                        // allocations made (not returned again), for idempotency checks
}

// newFakeAllocator serves cidr, e.g. "10.0.0.0/29" (five pod addresses, .2 to .6).
func newFakeAllocator(cidr string) *fakeAllocator {
	rng := netip.MustParsePrefix(cidr).Masked()
	if !rng.Addr().Is4() || rng.Bits() > 30 {
		panic("fake allocator wants an IPv4 range of at least /30, got " + cidr)
	}
	return &fakeAllocator{
		rng:    rng,
		gw:     netip.PrefixFrom(rng.Addr().Next(), rng.Bits()),
		allocs: map[string]ipam.Allocation{},
	}
}

func fakeKey(containerID, ifName string) string { return containerID + "/" + ifName }

func (a *fakeAllocator) Allocate(req ipam.Request) (ipam.Allocation, error) {
	if req.ContainerID == "" || req.IfName == "" {
		return ipam.Allocation{}, errors.New("container ID and interface name are required")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	key := fakeKey(req.ContainerID, req.IfName)
	if al, ok := a.allocs[key]; ok {
		return cloneAllocation(al), nil
	}
	used := map[netip.Addr]bool{}
	for _, al := range a.allocs {
		for _, ip := range al.IPs {
			used[ip.Addr()] = true
		}
	}
	// From the address after the gateway up to, not including, the broadcast address.
	for addr := a.gw.Addr().Next(); a.rng.Contains(addr.Next()); addr = addr.Next() {
		if used[addr] {
			continue
		}
		al := ipam.Allocation{
			ContainerID: req.ContainerID,
			IfName:      req.IfName,
			Netns:       req.Netns,
			IPs:         []netip.Prefix{netip.PrefixFrom(addr, a.rng.Bits())},
		}
		a.allocs[key] = al
		a.created++
		return cloneAllocation(al), nil
	}
	return ipam.Allocation{}, &ipam.ExhaustedError{Range: a.rng}
}

func (a *fakeAllocator) Release(containerID, ifName string) (ipam.Allocation, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := fakeKey(containerID, ifName)
	al, ok := a.allocs[key]
	delete(a.allocs, key)
	return al, ok, nil
}

func (a *fakeAllocator) Get(containerID, ifName string) (ipam.Allocation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.allocs[fakeKey(containerID, ifName)]
	return cloneAllocation(al), ok
}

func (a *fakeAllocator) List() []ipam.Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]ipam.Allocation, 0, len(a.allocs))
	for _, al := range a.allocs {
		out = append(out, cloneAllocation(al))
	}
	slices.SortFunc(out, func(x, y ipam.Allocation) int {
		return strings.Compare(fakeKey(x.ContainerID, x.IfName), fakeKey(y.ContainerID, y.IfName))
	})
	return out
}

func (a *fakeAllocator) Gateways() []netip.Prefix { return []netip.Prefix{a.gw} }

// createdCount is how many allocations Allocate made, not counting those it returned again.
func (a *fakeAllocator) createdCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.created
}

// dump is the allocator's state as sorted lines "containerID/ifName addresses netns", for a
// readable cmp.Diff. nil when there is nothing.
func (a *fakeAllocator) dump() []string {
	var lines []string
	for _, al := range a.List() {
		lines = append(lines, fmt.Sprintf("%s/%s %v %s", al.ContainerID, al.IfName, al.IPs, al.Netns))
	}
	return lines
}

func cloneAllocation(al ipam.Allocation) ipam.Allocation {
	al.IPs = slices.Clone(al.IPs)
	return al
}

// fakePod is what fakePlumber keeps of an attached pod interface.
type fakePod struct {
	netns             string // namespace identity as readlink shows it, "net:[4026531840]"
	ifName            string
	ips, gateways     []netip.Prefix
	mtu               int
	hostMAC, podIfMAC net.HardwareAddr
}

// fakePlumber keeps veth pairs in memory. Failures are injected per pod interface. A failed
// AttachPod leaves its veth behind, as a real one cut short half-way does, so a test sees whether
// the server cleans up after it.
type fakePlumber struct {
	mu         sync.Mutex
	veths      map[string]fakePod // by host veth name
	macs       int                // MACs handed out, so every veth gets its own
	failAttach map[string]error   // by host veth name
	failDetach map[string]error
	failCheck  map[string]error
	// onPodVeths, when set, runs at the start of PodVeths without the lock held, so a test can
	// act while Reconcile is half-way.
	onPodVeths func()
}

func newFakePlumber() *fakePlumber {
	return &fakePlumber{
		veths:      map[string]fakePod{},
		failAttach: map[string]error{},
		failDetach: map[string]error{},
		failCheck:  map[string]error{},
	}
}

// failAttachFor makes AttachPod of the pod interface fail with err; likewise the others.
func (p *fakePlumber) failAttachFor(containerID, ifName string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failAttach[routing.HostVethName(containerID, ifName)] = err
}

func (p *fakePlumber) failDetachFor(containerID, ifName string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failDetach[routing.HostVethName(containerID, ifName)] = err
}

func (p *fakePlumber) failCheckFor(containerID, ifName string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failCheck[routing.HostVethName(containerID, ifName)] = err
}

// addVeth puts a veth in place without a pod behind it, as a previous daemon may have left one.
func (p *fakePlumber) addVeth(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.veths[name] = fakePod{}
}

func (p *fakePlumber) AttachPod(pn routing.PodNetwork) (routing.PodInterfaces, error) {
	// The real plumber opens the path to enter the namespace; recording what it names checks
	// that the server hands over a path that still reaches the pod's namespace.
	netns, err := os.Readlink(pn.NetnsPath)
	if err != nil {
		return routing.PodInterfaces{}, fmt.Errorf("open pod netns: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pod, ok := p.veths[pn.HostVeth]
	if !ok {
		p.macs++
		pod.hostMAC = net.HardwareAddr{0x0e, 0, 0, 0, 0, byte(p.macs)}
		pod.podIfMAC = net.HardwareAddr{0x0e, 0, 0, 0, 1, byte(p.macs)}
	}
	pod.netns, pod.ifName, pod.mtu = netns, pn.IfName, pn.MTU
	pod.ips, pod.gateways = slices.Clone(pn.IPs), slices.Clone(pn.Gateways)
	p.veths[pn.HostVeth] = pod
	if err := p.failAttach[pn.HostVeth]; err != nil {
		return routing.PodInterfaces{}, err
	}
	return routing.PodInterfaces{
		HostVeth: routing.Interface{Name: pn.HostVeth, MAC: pod.hostMAC},
		PodIf:    routing.Interface{Name: pn.IfName, MAC: pod.podIfMAC},
	}, nil
}

// DetachPod, like the real one, takes a veth that is already gone for success.
func (p *fakePlumber) DetachPod(hostVeth string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.failDetach[hostVeth]; err != nil {
		return err
	}
	delete(p.veths, hostVeth)
	return nil
}

func (p *fakePlumber) CheckPod(pn routing.PodNetwork) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.failCheck[pn.HostVeth]; err != nil {
		return err
	}
	pod, ok := p.veths[pn.HostVeth]
	if !ok {
		return fmt.Errorf("veth %s not found", pn.HostVeth)
	}
	if !slices.Equal(pod.ips, pn.IPs) {
		return fmt.Errorf("pod has %v, want %v", pod.ips, pn.IPs)
	}
	return nil
}

func (p *fakePlumber) PodVeths() ([]string, error) {
	if p.onPodVeths != nil {
		p.onPodVeths()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	names := make([]string, 0, len(p.veths))
	for name := range p.veths {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, nil
}

// dump is the attached veths as sorted lines "hostVeth ifName netns addresses gateways mtu", for
// a readable cmp.Diff. nil when there is nothing.
func (p *fakePlumber) dump() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var lines []string
	for name, pod := range p.veths {
		if pod.ifName == "" {
			lines = append(lines, name+" (no pod)")
			continue
		}
		lines = append(lines, fmt.Sprintf("%s %s %s %v gw %v mtu %d", name, pod.ifName, pod.netns, pod.ips, pod.gateways, pod.mtu))
	}
	slices.Sort(lines)
	return lines
}

func ipamRequest(containerID, netns string) ipam.Request {
	return ipam.Request{ContainerID: containerID, IfName: "eth0", Netns: netns}
}
