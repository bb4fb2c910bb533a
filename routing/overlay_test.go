package routing

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

// Pure tests of the overlay's decisions: no kernel, golden text.

func TestNewOverlayValidates(t *testing.T) {
	h := &netlink.Handle{}
	good := OverlayConfig{
		LocalAddress: netip.MustParseAddr("198.18.0.1"),
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
	}
	o, err := NewOverlay(good, h, nil)
	if err != nil {
		t.Fatalf("NewOverlay: %v", err)
	}
	if o.cfg.Mode != ModeAuto || o.cfg.VNI != DefaultVNI || o.cfg.Port != DefaultVXLANPort {
		t.Errorf("defaults: mode %q vni %d port %d, want auto 1 8472", o.cfg.Mode, o.cfg.VNI, o.cfg.Port)
	}
	for _, tc := range []struct {
		name string
		edit func(*OverlayConfig)
		want string
	}{
		{"bad mode", func(c *OverlayConfig) { c.Mode = "bgp" }, `mode "bgp": want auto, direct or vxlan`},
		{"no local address", func(c *OverlayConfig) { c.LocalAddress = netip.Addr{} }, `local address "invalid IP": want this node's underlay address`},
		{"unspecified local address", func(c *OverlayConfig) { c.LocalAddress = netip.IPv4Unspecified() }, `local address "0.0.0.0": want this node's underlay address`},
		{"no pod CIDRs", func(c *OverlayConfig) { c.PodCIDRs = nil }, "pod CIDRs: at least one is required"},
		{"invalid pod CIDR", func(c *OverlayConfig) { c.PodCIDRs = []netip.Prefix{{}} }, "pod CIDR invalid Prefix: invalid prefix"},
		{"vni too big", func(c *OverlayConfig) { c.VNI = 1 << 24 }, "vni 16777216: want 1 to 16777215"},
		{"negative port", func(c *OverlayConfig) { c.Port = -1 }, "port -1: want 1 to 65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			_, err := NewOverlay(cfg, h, nil)
			if err == nil || err.Error() != tc.want {
				t.Errorf("NewOverlay: %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := NewOverlay(good, nil, nil); err == nil {
		t.Error("NewOverlay accepted a nil netlink handle")
	}
}

func TestVXLANArithmetic(t *testing.T) {
	var got []string
	for _, tc := range []struct {
		mtu  int
		addr string
	}{{1500, "198.18.0.1"}, {9000, "198.18.0.1"}, {1500, "2001:2::1"}, {1280 + 70, "2001:2::1"}} {
		got = append(got, fmt.Sprintf("uplink mtu %d %s: vxlan mtu %d", tc.mtu, tc.addr, vxlanMTU(tc.mtu, netip.MustParseAddr(tc.addr))))
	}
	for _, p := range []string{"10.244.1.0/24", "10.244.3.77/24", "10.244.0.0/16", "fd00:10:244:1::/64", "fd00:10:244:1::5/64"} {
		got = append(got, fmt.Sprintf("pod CIDR %s: vtep %s", p, vtepAddr(netip.MustParsePrefix(p))))
	}
	for _, a := range []string{"198.18.0.1", "198.18.1.3", "2001:2:0:a::1", "2001:2:0:b::1"} {
		got = append(got, fmt.Sprintf("underlay %s: vtep mac %s", a, vtepMAC(netip.MustParseAddr(a))))
	}
	want := `
uplink mtu 1500 198.18.0.1: vxlan mtu 1450
uplink mtu 9000 198.18.0.1: vxlan mtu 8950
uplink mtu 1500 2001:2::1: vxlan mtu 1430
uplink mtu 1350 2001:2::1: vxlan mtu 1280
pod CIDR 10.244.1.0/24: vtep 10.244.1.0
pod CIDR 10.244.3.77/24: vtep 10.244.3.0
pod CIDR 10.244.0.0/16: vtep 10.244.0.0
pod CIDR fd00:10:244:1::/64: vtep fd00:10:244:1::
pod CIDR fd00:10:244:1::5/64: vtep fd00:10:244:1::
underlay 198.18.0.1: vtep mac 0e:4e:c6:12:00:01
underlay 198.18.1.3: vtep mac 0e:4e:c6:12:01:03
underlay 2001:2:0:a::1: vtep mac 0e:4e:3e:e4:1a:73
underlay 2001:2:0:b::1: vtep mac 0e:4e:64:e0:7f:49`
	if diff := cmp.Diff(strings.TrimSpace(want), strings.Join(got, "\n")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// node1 is node 1 of the test cluster as its own plan sees it: on 198.18.0.0/24 through eth0.
var node1 = topology{
	mode:     ModeAuto,
	local:    netip.MustParseAddr("198.18.0.1"),
	podCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
	uplink:   "eth0",
	subnets:  []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")},
	vtepMAC:  vtepMAC(netip.MustParseAddr("198.18.0.1")),
}

func testPeer(name, addr string, mac string, cidrs ...string) Peer {
	p := Peer{Name: name, Address: netip.MustParseAddr(addr)}
	if mac != "" {
		var err error
		if p.VTEPMAC, err = net.ParseMAC(mac); err != nil {
			panic(err)
		}
	}
	for _, c := range cidrs {
		p.PodCIDRs = append(p.PodCIDRs, netip.MustParsePrefix(c))
	}
	return p
}

var (
	peer2 = testPeer("n2", "198.18.0.2", "0e:4e:c6:12:00:02", "10.244.2.0/24")
	peer3 = testPeer("n3", "198.18.1.3", "0e:4e:c6:12:01:03", "10.244.3.0/24")
)

// renderPlan is the plan as golden text: the wanted state, then the verdicts and errors.
func renderPlan(p overlayPlan) string {
	var b strings.Builder
	if s := p.want.String(); s != "" {
		b.WriteString(s + "\n")
	}
	for _, v := range []struct {
		name  string
		peers []string
	}{{"direct", p.direct}, {"vxlan", p.vxlan}, {"skipped", p.skipped}, {"rejected", p.rejected}} {
		if len(v.peers) == 0 {
			continue
		}
		var names []string
		for _, n := range v.peers {
			if n == "" {
				n = `""`
			}
			names = append(names, n)
		}
		fmt.Fprintf(&b, "%s: %s\n", v.name, strings.Join(names, " "))
	}
	for _, err := range p.errs {
		fmt.Fprintf(&b, "error: %v\n", err)
	}
	return strings.TrimSpace(b.String())
}

func TestPlanGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  string
		peers []Peer
		want  string
	}{
		{
			name:  "auto: same subnet direct, other subnet vxlan",
			mode:  ModeAuto,
			peers: []Peer{peer3, peer2},
			want: `
route 10.244.2.0/24 via 198.18.0.2 dev eth0
route 10.244.3.0/24 via 10.244.3.0 dev nodenet-vxlan onlink
neigh 10.244.3.0 dev nodenet-vxlan lladdr 0e:4e:c6:12:01:03 PERMANENT
fdb 0e:4e:c6:12:01:03 dev nodenet-vxlan dst 198.18.1.3 self permanent
direct: n2
vxlan: n3`,
		},
		{
			name:  "auto: an IPv6 pod range over an IPv4 underlay can only go over vxlan",
			mode:  ModeAuto,
			peers: []Peer{testPeer("n2", "198.18.0.2", "0e:4e:c6:12:00:02", "10.244.2.0/24", "fd00:10:244:2::/64")},
			want: `
route 10.244.2.0/24 via 198.18.0.2 dev eth0
route fd00:10:244:2::/64 via fd00:10:244:2:: dev nodenet-vxlan onlink
neigh fd00:10:244:2:: dev nodenet-vxlan lladdr 0e:4e:c6:12:00:02 PERMANENT
fdb 0e:4e:c6:12:00:02 dev nodenet-vxlan dst 198.18.0.2 self permanent
direct: n2
vxlan: n2`,
		},
		{
			name:  "auto: without a vtep mac a vxlan peer is skipped, a direct one is not",
			mode:  ModeAuto,
			peers: []Peer{testPeer("n3", "198.18.1.3", "", "10.244.3.0/24"), testPeer("n2", "198.18.0.2", "", "10.244.2.0/24")},
			want: `
route 10.244.2.0/24 via 198.18.0.2 dev eth0
direct: n2
skipped: n3`,
		},
		{
			name:  "vxlan: every peer over vxlan, with one fdb entry for all its ranges",
			mode:  ModeVXLAN,
			peers: []Peer{testPeer("n2", "198.18.0.2", "0e:4e:c6:12:00:02", "10.244.2.0/24", "fd00:10:244:2::/64"), peer3},
			want: `
route 10.244.2.0/24 via 10.244.2.0 dev nodenet-vxlan onlink
route 10.244.3.0/24 via 10.244.3.0 dev nodenet-vxlan onlink
route fd00:10:244:2::/64 via fd00:10:244:2:: dev nodenet-vxlan onlink
neigh 10.244.2.0 dev nodenet-vxlan lladdr 0e:4e:c6:12:00:02 PERMANENT
neigh 10.244.3.0 dev nodenet-vxlan lladdr 0e:4e:c6:12:01:03 PERMANENT
neigh fd00:10:244:2:: dev nodenet-vxlan lladdr 0e:4e:c6:12:00:02 PERMANENT
fdb 0e:4e:c6:12:00:02 dev nodenet-vxlan dst 198.18.0.2 self permanent
fdb 0e:4e:c6:12:01:03 dev nodenet-vxlan dst 198.18.1.3 self permanent
vxlan: n2 n3`,
		},
		{
			name:  "direct: a peer off the uplink's subnets is rejected, the others routed",
			mode:  ModeDirect,
			peers: []Peer{peer2, peer3},
			want: `
route 10.244.2.0/24 via 198.18.0.2 dev eth0
direct: n2
rejected: n3
error: peer n3: address 198.18.1.3 is on no subnet of eth0: direct routing needs a shared L2 segment`,
		},
		{
			name:  "direct: a pod range of the other family rejects the whole peer",
			mode:  ModeDirect,
			peers: []Peer{testPeer("n2", "198.18.0.2", "", "10.244.2.0/24", "fd00:10:244:2::/64")},
			want: `
rejected: n2
error: peer n2: pod CIDR fd00:10:244:2::/64 cannot be routed directly via 198.18.0.2: other address family`,
		},
		{
			name: "overlaps with this node and between peers",
			mode: ModeAuto,
			peers: []Peer{
				peer2,
				testPeer("self-twin", "198.18.0.9", "", "10.244.1.0/24"),
				testPeer("wide", "198.18.0.10", "", "10.244.0.0/23"),
				testPeer("dup-a", "198.18.0.11", "", "10.244.7.0/24"),
				testPeer("dup-b", "198.18.0.12", "", "10.244.7.0/25"),
				testPeer("v6", "198.18.0.13", "0e:4e:00:00:00:0d", "fd00:10:244:1:8000::/65"),
			},
			want: `
route 10.244.2.0/24 via 198.18.0.2 dev eth0
direct: n2
rejected: dup-a dup-b self-twin v6 wide
error: peer dup-a: pod CIDR 10.244.7.0/24 overlaps 10.244.7.0/25 of peer dup-b
error: peer dup-b: pod CIDR 10.244.7.0/25 overlaps 10.244.7.0/24 of peer dup-a
error: peer self-twin: pod CIDR 10.244.1.0/24 overlaps this node's 10.244.1.0/24
error: peer v6: pod CIDR fd00:10:244:1:8000::/65 overlaps this node's fd00:10:244:1::/64
error: peer wide: pod CIDR 10.244.0.0/23 overlaps this node's 10.244.1.0/24`,
		},
		{
			name: "pod ranges in the underlay",
			mode: ModeAuto,
			peers: []Peer{
				peer2,
				peer3,
				testPeer("on-my-segment", "198.18.0.20", "", "198.18.0.128/25"),
				testPeer("on-n3", "198.18.1.21", "0e:4e:00:00:00:21", "198.18.1.0/28"),
			},
			want: `
route 10.244.2.0/24 via 198.18.0.2 dev eth0
route 10.244.3.0/24 via 10.244.3.0 dev nodenet-vxlan onlink
neigh 10.244.3.0 dev nodenet-vxlan lladdr 0e:4e:c6:12:01:03 PERMANENT
fdb 0e:4e:c6:12:01:03 dev nodenet-vxlan dst 198.18.1.3 self permanent
direct: n2
vxlan: n3
rejected: on-my-segment on-n3
error: peer on-my-segment: pod CIDR 198.18.0.128/25 overlaps the underlay subnet 198.18.0.0/24
error: peer on-n3: pod CIDR 198.18.1.0/28 takes in the node address 198.18.1.3`,
		},
		{
			name: "bad peer data",
			mode: ModeAuto,
			peers: []Peer{
				peer2,
				testPeer("", "198.18.0.20", "", "10.244.20.0/24"),
				testPeer("twice", "198.18.0.21", "", "10.244.21.0/24"),
				testPeer("twice", "198.18.0.22", "", "10.244.22.0/24"),
				testPeer("me", "198.18.0.1", "", "10.244.23.0/24"),
				testPeer("v6-underlay", "2001:2::1", "", "10.244.24.0/24"),
				{Name: "no-address", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.25.0/24")}},
				testPeer("multicast-mac", "198.18.1.26", "01:00:5e:00:00:01", "10.244.26.0/24"),
				testPeer("my-mac", "198.18.1.27", "0e:4e:c6:12:00:01", "10.244.27.0/24"),
				testPeer("same-mac-a", "198.18.1.28", "0e:4e:00:00:00:28", "10.244.28.0/24"),
				testPeer("same-mac-b", "198.18.1.29", "0e:4e:00:00:00:28", "10.244.29.0/24"),
				testPeer("no-cidrs", "198.18.0.30", "0e:4e:00:00:00:30"),
				{Name: "bad-cidr", Address: netip.MustParseAddr("198.18.0.31"), PodCIDRs: []netip.Prefix{{}}},
			},
			want: `
route 10.244.2.0/24 via 198.18.0.2 dev eth0
direct: n2
skipped: no-cidrs
rejected: "" bad-cidr me multicast-mac my-mac no-address same-mac-a same-mac-b twice v6-underlay
error: unnamed peer: address 198.18.0.20: a peer needs a name
error: peer bad-cidr: invalid pod CIDR invalid Prefix
error: peer me: has this node's address 198.18.0.1
error: peer multicast-mac: vtep mac 01:00:5e:00:00:01 is not a unicast ethernet address
error: peer my-mac: vtep mac 0e:4e:c6:12:00:01 is this node's
error: peer no-address: no address
error: peer same-mac-a: vtep mac 0e:4e:00:00:00:28 is also that of same-mac-b
error: peer same-mac-b: vtep mac 0e:4e:00:00:00:28 is also that of same-mac-a
error: peer twice: listed 2 times
error: peer v6-underlay: address 2001:2::1 is not of the family of this node's 198.18.0.1`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			top := node1
			top.mode = tc.mode
			got := renderPlan(plan(top, tc.peers))
			if diff := cmp.Diff(strings.TrimSpace(tc.want), got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPlanNeverRoutesOwnPodCIDRs throws random peers at the plan, many of them claiming ranges
// that overlap this node's, and checks that no wanted route reaches into an own range.
func TestPlanNeverRoutesOwnPodCIDRs(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randPrefix := func() netip.Prefix {
		if rng.IntN(4) == 0 {
			bits := 48 + rng.IntN(81)
			a := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, byte(rng.IntN(3)), byte(rng.IntN(256))})
			return netip.PrefixFrom(a, bits).Masked()
		}
		bits := 14 + rng.IntN(19)
		a := netip.AddrFrom4([4]byte{10, byte(243 + rng.IntN(3)), byte(rng.IntN(4)), byte(rng.IntN(256))})
		return netip.PrefixFrom(a, bits).Masked()
	}
	for round := range 300 {
		var peers []Peer
		for i := range 1 + rng.IntN(6) {
			p := Peer{Name: fmt.Sprintf("p%d", i), Address: netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(2)), byte(2 + i)})}
			if rng.IntN(3) > 0 {
				p.VTEPMAC = net.HardwareAddr{0x0e, 0x4e, 0, 0, 0, byte(i)}
			}
			for range rng.IntN(3) {
				p.PodCIDRs = append(p.PodCIDRs, randPrefix())
			}
			peers = append(peers, p)
		}
		for _, mode := range []string{ModeAuto, ModeDirect, ModeVXLAN} {
			top := node1
			top.mode = mode
			p := plan(top, peers)
			for _, r := range p.want.Routes {
				for _, own := range top.podCIDRs {
					if r.Dst.Overlaps(own) {
						t.Fatalf("round %d mode %s: route %s overlaps own %s; peers %v", round, mode, r, own, peers)
					}
				}
			}
			for i, a := range p.want.Routes {
				for _, b := range p.want.Routes[i+1:] {
					if a.Dst.Overlaps(b.Dst) {
						t.Fatalf("round %d mode %s: routes %s and %s overlap", round, mode, a, b)
					}
				}
			}
		}
	}
}

func mustMAC(s string) string {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m.String()
}

func TestDiffGolden(t *testing.T) {
	p := plan(node1, []Peer{peer2, peer3})
	want := p.want
	stale := ovState{
		Routes: []ovRoute{
			// n3's range, still direct from before it moved behind a router.
			{Dst: netip.MustParsePrefix("10.244.3.0/24"), Via: netip.MustParseAddr("198.18.0.3"), Dev: "eth0"},
			// A node that is gone.
			{Dst: netip.MustParsePrefix("10.244.9.0/24"), Via: netip.MustParseAddr("10.244.9.0"), Dev: VXLANDevice, OnLink: true},
			// Ours by protocol, at a metric we do not use.
			{Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("198.18.0.2"), Dev: "eth0", Metric: 100},
		},
		Neighs: []ovNeigh{
			{IP: netip.MustParseAddr("10.244.9.0"), MAC: mustMAC("0e:4e:c6:12:00:09"), Permanent: true},
			// Learned by the kernel: not ours to delete.
			{IP: netip.MustParseAddr("10.244.8.0"), MAC: mustMAC("0e:4e:c6:12:00:08")},
			// Wanted, but not permanent yet.
			{IP: netip.MustParseAddr("10.244.3.0"), MAC: mustMAC("0e:4e:c6:12:01:03")},
		},
		FDB: []ovFDB{
			{MAC: mustMAC("0e:4e:c6:12:00:09"), Dst: netip.MustParseAddr("198.18.0.9"), Permanent: true},
			// n3's MAC with an extra destination.
			{MAC: mustMAC("0e:4e:c6:12:01:03"), Dst: netip.MustParseAddr("198.18.0.3"), Permanent: true},
		},
	}
	for _, tc := range []struct {
		name string
		have ovState
		want string
	}{
		{"empty kernel", ovState{}, `
replace fdb 0e:4e:c6:12:01:03 dev nodenet-vxlan dst 198.18.1.3 self permanent
replace neigh 10.244.3.0 dev nodenet-vxlan lladdr 0e:4e:c6:12:01:03 PERMANENT
replace route 10.244.2.0/24 via 198.18.0.2 dev eth0
replace route 10.244.3.0/24 via 10.244.3.0 dev nodenet-vxlan onlink`},
		{"unchanged", want, ``},
		{"stale entries", stale, `
replace fdb 0e:4e:c6:12:01:03 dev nodenet-vxlan dst 198.18.1.3 self permanent
replace neigh 10.244.3.0 dev nodenet-vxlan lladdr 0e:4e:c6:12:01:03 PERMANENT
replace route 10.244.2.0/24 via 198.18.0.2 dev eth0
replace route 10.244.3.0/24 via 10.244.3.0 dev nodenet-vxlan onlink
delete route 10.244.9.0/24 via 10.244.9.0 dev nodenet-vxlan onlink
delete route 10.244.2.0/24 via 198.18.0.2 dev eth0 metric 100
delete neigh 10.244.9.0 dev nodenet-vxlan lladdr 0e:4e:c6:12:00:09 PERMANENT
delete fdb 0e:4e:c6:12:00:09 dev nodenet-vxlan dst 198.18.0.9 self permanent
delete fdb 0e:4e:c6:12:01:03 dev nodenet-vxlan dst 198.18.0.3 self permanent`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range diff(tc.have, want) {
				got = append(got, c.String())
			}
			if d := cmp.Diff(strings.TrimSpace(tc.want), strings.Join(got, "\n")); d != "" {
				t.Errorf("diff (-want +got):\n%s", d)
			}
		})
	}
}
