package routing

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/ti-mo/conntrack"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

var (
	pod4 = netip.MustParseAddr("10.244.1.2")
	pod6 = netip.MustParseAddr("fd00:10:244:1::2")
)

func entryLines(es []hostPortEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.String())
	}
	return out
}

func TestExpandPortMappings(t *testing.T) {
	dual := []netip.Addr{pod4, pod6}
	for _, tc := range []struct {
		name     string
		ips      []netip.Addr
		mappings []PortMapping
		want     []string
		wantErr  string
	}{
		{
			name:     "every address, in each family of the pod; protocol defaults to tcp, any case",
			ips:      dual,
			mappings: []PortMapping{{HostPort: 8080, ContainerPort: 80}, {HostPort: 53, ContainerPort: 5353, Protocol: "UDP"}},
			want: []string{
				"hostPort 8080/tcp on every local IPv4 address to 10.244.1.2:80",
				"hostPort 53/udp on every local IPv4 address to 10.244.1.2:5353",
				"hostPort 8080/tcp on every local IPv6 address to [fd00:10:244:1::2]:80",
				"hostPort 53/udp on every local IPv6 address to [fd00:10:244:1::2]:5353",
			},
		},
		{
			name:     "single-stack pod: only its family",
			ips:      []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "sctp"}},
			want:     []string{"hostPort 8080/sctp on every local IPv4 address to 10.244.1.2:80"},
		},
		{
			name: "hostIP: that address only, in its family",
			ips:  dual,
			mappings: []PortMapping{
				{HostPort: 8080, ContainerPort: 80, HostIP: "198.18.0.11"},
				{HostPort: 8080, ContainerPort: 80, HostIP: "198.18.0.12"},
				{HostPort: 8080, ContainerPort: 80, HostIP: "fd00:198::11"},
				{HostPort: 9090, ContainerPort: 90, HostIP: "::ffff:198.18.0.11"},
			},
			want: []string{
				"hostPort 8080/tcp on 198.18.0.11 to 10.244.1.2:80",
				"hostPort 8080/tcp on 198.18.0.12 to 10.244.1.2:80",
				"hostPort 9090/tcp on 198.18.0.11 to 10.244.1.2:90",
				"hostPort 8080/tcp on fd00:198::11 to [fd00:10:244:1::2]:80",
			},
		},
		{
			name:     "unspecified hostIP: every address of its family",
			ips:      dual,
			mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "0.0.0.0"}, {HostPort: 443, ContainerPort: 443, HostIP: "::"}},
			want: []string{
				"hostPort 80/tcp on every local IPv4 address to 10.244.1.2:80",
				"hostPort 443/tcp on every local IPv6 address to [fd00:10:244:1::2]:443",
			},
		},
		{
			name:     "unspecified hostIP of a family the pod lacks: nothing",
			ips:      []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 443, ContainerPort: 443, HostIP: "::"}},
		},
		{
			name:     "duplicates are one",
			ips:      []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 80, ContainerPort: 8080, Protocol: "tcp"}, {HostPort: 80, ContainerPort: 8080, Protocol: "TCP"}},
			want:     []string{"hostPort 80/tcp on every local IPv4 address to 10.244.1.2:8080"},
		},
		{
			name:     "same port, other protocol: no conflict",
			ips:      []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 53, ContainerPort: 53, Protocol: "tcp"}, {HostPort: 53, ContainerPort: 53, Protocol: "udp"}},
			want: []string{
				"hostPort 53/tcp on every local IPv4 address to 10.244.1.2:53",
				"hostPort 53/udp on every local IPv4 address to 10.244.1.2:53",
			},
		},
		{name: "host port 0", ips: dual, mappings: []PortMapping{{HostPort: 0, ContainerPort: 80}}, wantErr: "port mapping 0/->80: hostPort 0 is not in 1..65535"},
		{name: "host port too large", ips: dual, mappings: []PortMapping{{HostPort: 65536, ContainerPort: 80}}, wantErr: "hostPort 65536 is not in 1..65535"},
		{name: "container port 0", ips: dual, mappings: []PortMapping{{HostPort: 80}}, wantErr: "containerPort 0 is not in 1..65535"},
		{name: "unknown protocol", ips: dual, mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, Protocol: "icmp"}}, wantErr: `protocol "icmp" is not one of tcp, udp, sctp`},
		{name: "hostIP not an address", ips: dual, mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "node1"}}, wantErr: `hostIP "node1" is not an IP address`},
		{name: "hostIP with a zone", ips: dual, mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "fe80::1%eth0"}}, wantErr: `hostIP "fe80::1%eth0" is not an IP address`},
		{
			name: "loopback hostIP: that address only, relayed, tcp and udp",
			ips:  dual,
			mappings: []PortMapping{
				{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.1"},
				{HostPort: 54323, ContainerPort: 8080, Protocol: "udp", HostIP: "127.0.0.1"},
				{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.2"},
				{HostPort: 54323, ContainerPort: 8080, HostIP: "::1"},
				{HostPort: 54324, ContainerPort: 8080, HostIP: "::ffff:127.0.0.1"},
			},
			want: []string{
				"hostPort 54323/tcp on 127.0.0.1 to 10.244.1.2:8080",
				"hostPort 54323/tcp on 127.0.0.2 to 10.244.1.2:8080",
				"hostPort 54324/tcp on 127.0.0.1 to 10.244.1.2:8080",
				"hostPort 54323/udp on 127.0.0.1 to 10.244.1.2:8080",
				"hostPort 54323/tcp on ::1 to [fd00:10:244:1::2]:8080",
			},
		},
		{
			name: "loopback and every address on one port: no conflict, the latter leaves loopback out",
			ips:  []netip.Addr{pod4},
			mappings: []PortMapping{
				{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.1"},
				{HostPort: 54323, ContainerPort: 8081},
			},
			want: []string{
				"hostPort 54323/tcp on every local IPv4 address to 10.244.1.2:8081",
				"hostPort 54323/tcp on 127.0.0.1 to 10.244.1.2:8080",
			},
		},
		{
			name: "one loopback port to two pod ports", ips: []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "127.0.0.1"}, {HostPort: 80, ContainerPort: 8080, HostIP: "127.0.0.1"}},
			wantErr:  "hostPort 80/tcp on 127.0.0.1 to 10.244.1.2:8080 conflicts with hostPort 80/tcp on 127.0.0.1 to 10.244.1.2:80 held by the same pod",
		},
		{name: "sctp on a loopback hostIP", ips: dual, mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, Protocol: "sctp", HostIP: "127.0.0.1"}}, wantErr: "hostIP 127.0.0.1 is a loopback address, which nodenet relays for tcp and udp only"},
		{
			name: "ipv6 loopback hostIP of a pod without ipv6", ips: []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "::1"}},
			wantErr:  "the pod has no IPv6 address to send traffic for ::1 to",
		},
		{name: "multicast hostIP", ips: dual, mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "224.0.0.1"}}, wantErr: "hostIP 224.0.0.1 is not a unicast address"},
		{
			name: "hostIP of a family the pod lacks", ips: []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "fd00:198::11"}},
			wantErr:  "the pod has no IPv6 address to send traffic for fd00:198::11 to",
		},
		{
			name: "one port to two pod ports", ips: []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 80, ContainerPort: 80}, {HostPort: 80, ContainerPort: 8080}},
			wantErr:  "hostPort 80/tcp on every local IPv4 address to 10.244.1.2:8080 conflicts with hostPort 80/tcp on every local IPv4 address to 10.244.1.2:80 held by the same pod",
		},
		{
			name: "every address and one address on one port", ips: []netip.Addr{pod4},
			mappings: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "198.18.0.11"}, {HostPort: 80, ContainerPort: 80}},
			wantErr:  "conflicts with",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := expandPortMappings(tc.ips, tc.mappings)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				var invalid *InvalidPortMappingError
				var conflict *PortConflictError
				if !errors.As(err, &invalid) && !errors.As(err, &conflict) {
					t.Errorf("error %T is neither invalid mapping nor conflict", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, entryLines(got)); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOverlaps: which two mappings of other pods conflict. The upstream conformance spec "no
// conflict between pods with same hostPort but different hostIP and protocol" puts three pods on
// port 54323: 127.0.0.1 tcp, the node's address tcp, the node's address udp.
func TestOverlaps(t *testing.T) {
	entry := func(hostIP, proto string) hostPortEntry {
		es, err := expandPortMappings([]netip.Addr{pod4, pod6}, []PortMapping{{HostPort: 54323, ContainerPort: 8080, Protocol: proto, HostIP: hostIP}})
		if err != nil || len(es) == 0 {
			t.Fatalf("%s %s: %v", hostIP, proto, err)
		}
		return es[0]
	}
	for _, tc := range []struct {
		a, b   hostPortEntry
		overlp bool
	}{
		{entry("127.0.0.1", "tcp"), entry("198.18.0.11", "tcp"), false},
		{entry("127.0.0.1", "tcp"), entry("198.18.0.11", "udp"), false},
		{entry("198.18.0.11", "tcp"), entry("198.18.0.11", "udp"), false},
		{entry("127.0.0.1", "tcp"), entry("127.0.0.1", "tcp"), true},
		{entry("127.0.0.1", "tcp"), entry("127.0.0.1", "udp"), false},
		{entry("127.0.0.1", "tcp"), entry("127.0.0.2", "tcp"), false},
		{entry("127.0.0.1", "tcp"), entry("", "tcp"), false},
		{entry("127.0.0.1", "tcp"), entry("0.0.0.0", "tcp"), false},
		{entry("::1", "tcp"), entry("::", "tcp"), false},
		{entry("::1", "tcp"), entry("::1", "tcp"), true},
		{entry("::1", "tcp"), entry("127.0.0.1", "tcp"), false},
		{entry("198.18.0.11", "tcp"), entry("", "tcp"), true},
		{entry("198.18.0.11", "tcp"), entry("198.18.0.11", "tcp"), true},
	} {
		if got := tc.a.overlaps(tc.b); got != tc.overlp || tc.b.overlaps(tc.a) != got {
			t.Errorf("%s overlaps %s: %v, want %v both ways", tc.a, tc.b, got, tc.overlp)
		}
	}
}

func TestAttachmentKey(t *testing.T) {
	if got := (Attachment{ContainerID: "abc", IfName: "eth0"}).key(); got != "abc/eth0" {
		t.Errorf("key = %q", got)
	}
	long := Attachment{ContainerID: strings.Repeat("a", 300), IfName: "eth0"}
	if k := long.key(); len(k) > maxOwnerLen || !strings.HasPrefix(k, "sha256:") || k == (Attachment{ContainerID: strings.Repeat("a", 301), IfName: "eth0"}).key() {
		t.Errorf("key of a long container ID = %q", k)
	}
}

// renderHostPorts is the hostPort chains in nft's notation.
func renderHostPorts() string {
	var b strings.Builder
	for _, c := range hostPortChains() {
		fmt.Fprintf(&b, "chain %s {\n", c.name)
		if c.hook != nil {
			fmt.Fprintf(&b, "\ttype nat hook %s priority %d\n", map[nftables.ChainHook]string{
				*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookOutput: "output", *nftables.ChainHookPostrouting: "postrouting",
			}[*c.hook], c.prio)
		}
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t%s\n", r)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func TestHostPortRulesGolden(t *testing.T) {
	want := `chain hostport-prerouting {
	type nat hook prerouting priority -101
	fib daddr type local jump hostport-dnat
}
chain hostport-output {
	type nat hook output priority -101
	fib daddr type local jump hostport-dnat
}
chain hostport-dnat {
	meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hostport-addr-v4
	meta nfproto ipv4 ip daddr != 127.0.0.0/8 dnat ip to meta l4proto . th dport map @hostport-any-v4
	meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostport-addr-v6
	meta nfproto ipv6 ip6 daddr != ::1/128 dnat ip6 to meta l4proto . th dport map @hostport-any-v6
}
chain hostport-postrouting {
	type nat hook postrouting priority 100
	ct status dnat meta nfproto ipv4 ip saddr . ip daddr @hostport-hairpin-v4 masquerade
	ct status dnat meta nfproto ipv6 ip6 saddr . ip6 daddr @hostport-hairpin-v6 masquerade
}
`
	if diff := cmp.Diff(want, renderHostPorts()); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
}

// hpPacket is what the hostPort chains look at.
type hpPacket struct {
	hook     string // prerouting, output or postrouting
	src, dst string
	proto    uint8
	dport    uint16
	ctDNAT   bool // postrouting: conntrack rewrote the destination
}

// traceHostPorts walks the chains of hook the way the kernel does, over the elements of entries,
// on a node whose local addresses are local. It returns "dnat to ADDR:PORT", "masquerade" or
// "accept" (no rule took the packet).
func traceHostPorts(entries []hostPortEntry, local []string, p hpPacket) string {
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	fam := 4
	if dst.Is6() {
		fam = 6
	}
	chains := hostPortChains()
	byName := map[string]hpChain{}
	for _, c := range chains {
		byName[c.name] = c
	}
	var walk func(c hpChain) (string, bool)
	walk = func(c hpChain) (string, bool) {
		for _, r := range c.rules {
			switch {
			case r.ctDNAT && !p.ctDNAT,
				r.family != 0 && r.family != fam,
				r.fibLocal && !slices.Contains(local, p.dst),
				r.noLoop && loopbacks[fam].Contains(dst):
				continue
			}
			switch {
			case r.jump != "":
				if v, done := walk(byName[r.jump]); done {
					return v, true
				}
			case r.dnat != nil:
				for _, e := range entries {
					if mapOf(e) == *r.dnat && e.proto == p.proto && e.hostPort == p.dport && (!r.dnat.byAddr || e.hostIP == dst) {
						return "dnat to " + netip.AddrPortFrom(e.podIP, e.podPort).String(), true
					}
				}
			case r.hairpin:
				if src == dst && slices.Contains(hairpinIPs(entries), src) {
					return "masquerade", true
				}
			}
		}
		return "", false
	}
	for _, c := range chains {
		if c.hook == nil || map[string]nftables.ChainHook{
			"prerouting": *nftables.ChainHookPrerouting, "output": *nftables.ChainHookOutput, "postrouting": *nftables.ChainHookPostrouting,
		}[p.hook] != *c.hook {
			continue
		}
		if v, done := walk(c); done {
			return v
		}
	}
	return "accept"
}

func TestHostPortTrace(t *testing.T) {
	entries, err := expandPortMappings([]netip.Addr{pod4, pod6}, []PortMapping{
		{HostPort: 8080, ContainerPort: 80},
		{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: "198.18.0.11"},
		{HostPort: 9443, ContainerPort: 443, HostIP: "fd00:198::11"},
		// An address that is not the node's: the mapping must never capture traffic through it.
		{HostPort: 53, ContainerPort: 53, Protocol: "udp", HostIP: "1.1.1.1"},
		// Relayed in userspace: no rule may touch it.
		{HostPort: 9090, ContainerPort: 90, HostIP: "127.0.0.1"},
		{HostPort: 9090, ContainerPort: 90, Protocol: "udp", HostIP: "::1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	local := []string{"198.18.0.11", "198.18.0.12", "10.244.1.1", "127.0.0.1", "fd00:198::11", "::1"}
	const udp, tcp = unix.IPPROTO_UDP, unix.IPPROTO_TCP
	for _, tc := range []struct {
		name string
		pkt  hpPacket
		want string
	}{
		{"outside to a node address", hpPacket{"prerouting", "198.18.0.200", "198.18.0.11", tcp, 8080, false}, "dnat to 10.244.1.2:80"},
		{"outside to another node address", hpPacket{"prerouting", "198.18.0.200", "198.18.0.12", tcp, 8080, false}, "dnat to 10.244.1.2:80"},
		{"pod to the gateway address", hpPacket{"prerouting", "10.244.1.3", "10.244.1.1", tcp, 8080, false}, "dnat to 10.244.1.2:80"},
		{"ipv6 outside to a node address", hpPacket{"prerouting", "fd00:198::200", "fd00:198::11", tcp, 8080, false}, "dnat to [fd00:10:244:1::2]:80"},
		{"other port", hpPacket{"prerouting", "198.18.0.200", "198.18.0.11", tcp, 8081, false}, "accept"},
		{"other protocol", hpPacket{"prerouting", "198.18.0.200", "198.18.0.11", udp, 8080, false}, "accept"},
		{"through the node, not to it (CVE-2025-67499)", hpPacket{"prerouting", "10.244.1.3", "198.18.0.200", tcp, 8080, false}, "accept"},
		{"to a pod on the node, not to the node", hpPacket{"prerouting", "198.18.0.200", "10.244.1.3", tcp, 8080, false}, "accept"},
		{"hostIP: its address", hpPacket{"prerouting", "198.18.0.200", "198.18.0.11", udp, 53, false}, "dnat to 10.244.1.2:5353"},
		{"hostIP: another node address", hpPacket{"prerouting", "198.18.0.200", "198.18.0.12", udp, 53, false}, "accept"},
		{"hostIP: the gateway address", hpPacket{"prerouting", "10.244.1.3", "10.244.1.1", udp, 53, false}, "accept"},
		{"hostIP that is not the node's: traffic to it passes", hpPacket{"prerouting", "10.244.1.3", "1.1.1.1", udp, 53, false}, "accept"},
		{"hostIP that is not the node's: from the node too", hpPacket{"output", "198.18.0.11", "1.1.1.1", udp, 53, false}, "accept"},
		{"ipv6 hostIP", hpPacket{"prerouting", "fd00:198::200", "fd00:198::11", tcp, 9443, false}, "dnat to [fd00:10:244:1::2]:443"},
		{"ipv4 hostIP port over ipv6", hpPacket{"prerouting", "fd00:198::200", "fd00:198::11", udp, 53, false}, "accept"},
		{"node to its own address", hpPacket{"output", "198.18.0.11", "198.18.0.11", tcp, 8080, false}, "dnat to 10.244.1.2:80"},
		{"node to loopback", hpPacket{"output", "127.0.0.1", "127.0.0.1", tcp, 8080, false}, "accept"},
		{"node to ipv6 loopback", hpPacket{"output", "::1", "::1", tcp, 8080, false}, "accept"},
		{"node to a relayed loopback hostPort: left to the relay's socket", hpPacket{"output", "127.0.0.1", "127.0.0.1", tcp, 9090, false}, "accept"},
		{"node address to a relayed loopback hostPort (curl --interface)", hpPacket{"output", "198.18.0.11", "127.0.0.1", tcp, 9090, false}, "accept"},
		{"relayed ipv6 loopback hostPort", hpPacket{"output", "::1", "::1", udp, 9090, false}, "accept"},
		{"the relayed port on a node address is not mapped", hpPacket{"prerouting", "198.18.0.200", "198.18.0.11", tcp, 9090, false}, "accept"},
		{"hairpin back to the pod", hpPacket{"postrouting", "10.244.1.2", "10.244.1.2", tcp, 80, true}, "masquerade"},
		{"ipv6 hairpin", hpPacket{"postrouting", "fd00:10:244:1::2", "fd00:10:244:1::2", tcp, 80, true}, "masquerade"},
		{"other pod to the pod keeps its address", hpPacket{"postrouting", "10.244.1.3", "10.244.1.2", tcp, 80, true}, "accept"},
		{"outside to the pod keeps its address", hpPacket{"postrouting", "198.18.0.200", "10.244.1.2", tcp, 80, true}, "accept"},
		{"not rewritten: not a hairpin", hpPacket{"postrouting", "10.244.1.2", "10.244.1.2", tcp, 80, false}, "accept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := traceHostPorts(entries, local, tc.pkt); got != tc.want {
				t.Errorf("trace = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestHostPortElementsRoundTrip(t *testing.T) {
	entries, err := expandPortMappings([]netip.Addr{pod4, pod6}, []PortMapping{
		{HostPort: 8080, ContainerPort: 80},
		{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: "198.18.0.11"},
		{HostPort: 9443, ContainerPort: 443, Protocol: "sctp", HostIP: "fd00:198::11"},
		{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.1"},
		{HostPort: 54323, ContainerPort: 8080, Protocol: "udp", HostIP: "::1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var relayMaps []string
	for _, e := range entries {
		if e.relayed() {
			relayMaps = append(relayMaps, mapOf(e).name())
		}
		m := mapOf(e)
		el := e.element("c1/eth0")
		s := m.set(nil)
		if len(el.Key) != int(s.KeyType.Bytes) || len(el.Val) != int(s.DataType.Bytes) {
			t.Errorf("%s: key %d and value %d bytes, map %s wants %d and %d", e, len(el.Key), len(el.Val), m.name(), s.KeyType.Bytes, s.DataType.Bytes)
		}
		got, owner, err := m.decodeElement(el)
		if err != nil || got != e || owner != "c1/eth0" {
			t.Errorf("%s: decoded %s owner %q err %v", e, got, owner, err)
		}
	}
	if diff := cmp.Diff([]string{"hostport-relay-v4", "hostport-relay-v6"}, relayMaps); diff != "" {
		t.Errorf("maps of the loopback mappings (-want +got):\n%s", diff)
	}
	if _, _, err := (hpMap{}).decodeElement(nftables.SetElement{Key: []byte{6}, Val: []byte{1}}); err == nil {
		t.Error("decoded an element of the wrong layout")
	}
	for _, ip := range []netip.Addr{pod4, pod6} {
		if got, ok := decodeHairpin(hairpinElement(ip)); !ok || got != ip {
			t.Errorf("hairpin %s decoded as %s %v", ip, got, ok)
		}
	}
	// The layout nft lists as "tcp . 8080 : 10.244.1.2 . 80": each field padded to 4 bytes.
	el := hostPortEntry{proto: unix.IPPROTO_TCP, hostPort: 8080, podIP: pod4, podPort: 80}.element("")
	if !slices.Equal(el.Key, []byte{6, 0, 0, 0, 0x1f, 0x90, 0, 0}) || !slices.Equal(el.Val, []byte{10, 244, 1, 2, 0, 80, 0, 0}) {
		t.Errorf("element %x : %x", el.Key, el.Val)
	}
}

func TestReg32(t *testing.T) {
	for word, want := range map[uint32]uint32{0: 1, 1: 9, 2: 10, 3: 11, 4: 2, 5: 13} {
		if got := reg32(word); got != want {
			t.Errorf("reg32(%d) = %d, want %d", word, got, want)
		}
	}
}

// fakeConntrack is an in-memory conntrack table; entries are keyed by their original tuple, as
// the kernel looks them up for a delete.
type fakeConntrack struct {
	flows     []conntrack.Flow
	deleteErr map[string]error // the delete fails, the entry stays
	vanish    map[string]bool  // the entry expires between the dump and its delete
	dials     int
	closed    bool
}

func (f *fakeConntrack) Dump(*conntrack.DumpOptions) ([]conntrack.Flow, error) {
	return slices.Clone(f.flows), nil
}

func (f *fakeConntrack) Delete(fl conntrack.Flow) error {
	key := fl.TupleOrig.String()
	if err := f.deleteErr[key]; err != nil {
		return err
	}
	i := slices.IndexFunc(f.flows, func(g conntrack.Flow) bool { return g.TupleOrig.String() == key })
	if i < 0 {
		return syscall.ENOENT
	}
	f.flows = slices.Delete(f.flows, i, i+1)
	if f.vanish[key] {
		return fmt.Errorf("netlink receive: %w", syscall.ENOENT)
	}
	return nil
}

func (f *fakeConntrack) Close() error { f.closed = true; return nil }

// ctFlow is a conntrack entry "proto src:sport > dst:dport < rsrc:rsport", the reply's source
// being where the flow went (the pod after a DNAT).
func ctFlow(t *testing.T, s string) conntrack.Flow {
	t.Helper()
	var proto, o1, o2, r string
	if _, err := fmt.Sscanf(s, "%s %s > %s < %s", &proto, &o1, &o2, &r); err != nil {
		t.Fatalf("flow %q: %v", s, err)
	}
	src, dst, rsrc := netip.MustParseAddrPort(o1), netip.MustParseAddrPort(o2), netip.MustParseAddrPort(r)
	f := conntrack.NewFlow(protoNumbers[proto], 0, src.Addr(), dst.Addr(), src.Port(), dst.Port(), 30, 0)
	f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = rsrc.Addr(), rsrc.Port()
	f.TupleReply.IP.DestinationAddress, f.TupleReply.Proto.DestinationPort = src.Addr(), src.Port()
	if rsrc != dst {
		f.Status |= conntrack.StatusDstNAT
	}
	return f
}

func TestCleanConntrack(t *testing.T) {
	mk := func(mappings ...PortMapping) []hostPortEntry {
		es, err := expandPortMappings([]netip.Addr{pod4, pod6}, mappings)
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	flows := []string{
		0: "udp 198.18.0.200:4000 > 198.18.0.11:53 < 10.244.1.2:5353",               // sent to the pod by the mapping
		1: "udp 198.18.0.200:4001 > 198.18.0.12:53 < 10.244.1.2:5353",               // same, through another node address
		2: "udp [fd00:198::200]:4000 > [fd00:198::11]:53 < [fd00:10:244:1::2]:5353", // ipv6
		3: "tcp 198.18.0.200:4000 > 198.18.0.11:53 < 10.244.1.2:5353",               // tcp ends on its own
		4: "udp 198.18.0.200:4002 > 198.18.0.11:53 < 10.244.1.9:5353",               // another pod's
		5: "udp 198.18.0.200:4003 > 198.18.0.11:53 < 198.18.0.11:53",                // to the node itself, no DNAT
		6: "udp 10.244.1.3:4004 > 1.1.1.1:53 < 1.1.1.1:53",                          // through the node
		7: "udp 198.18.0.200:4005 > 198.18.0.11:54 < 198.18.0.11:54",                // another port
		8: "udp 198.18.0.200:4006 > 10.96.0.10:53 < 10.244.1.2:5353",                // a Service's, to the pod
		9: "udp 127.0.0.1:4007 > 127.0.0.1:53 < 127.0.0.1:53",                       // to a relay's socket
	}
	local := []netip.Addr{netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.0.12"), netip.MustParseAddr("fd00:198::11")}
	for _, tc := range []struct {
		name           string
		added, removed []hostPortEntry
		deleteErr      map[int]error
		vanish         []int
		wantLeft       []int
		wantDeleted    int
		wantErr        string
	}{
		{
			name:        "removed mapping for every address: what it sent to the pod",
			removed:     mk(PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp"}),
			wantLeft:    []int{3, 4, 5, 6, 7, 8, 9},
			wantDeleted: 3,
		},
		{
			name:        "removed mapping with a hostIP: only to that address",
			removed:     mk(PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: "198.18.0.11"}),
			wantLeft:    []int{1, 2, 3, 4, 5, 6, 7, 8, 9},
			wantDeleted: 1,
		},
		{
			name:     "tcp: nothing, and no socket",
			removed:  mk(PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "tcp"}),
			wantLeft: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		},
		{
			name:        "added mapping: flows to the node itself on the port, not those through it",
			added:       mk(PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp"}),
			wantLeft:    []int{0, 1, 2, 3, 4, 6, 7, 8, 9},
			wantDeleted: 1,
		},
		{
			name:     "added mapping with another hostIP",
			added:    mk(PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: "198.18.0.12"}),
			wantLeft: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		},
		{
			name:     "relayed mappings: nothing, the relay's sessions are its own, and no socket",
			added:    mk(PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: "127.0.0.1"}),
			removed:  mk(PortMapping{HostPort: 53, ContainerPort: 53, Protocol: "udp", HostIP: "127.0.0.1"}),
			wantLeft: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		},
		{
			name:        "a failed delete is reported and the rest goes on; an entry that vanished is no failure",
			removed:     mk(PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp"}),
			deleteErr:   map[int]error{0: syscall.EPERM},
			vanish:      []int{1},
			wantLeft:    []int{0, 3, 4, 5, 6, 7, 8, 9},
			wantDeleted: 1,
			wantErr:     "operation not permitted",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := &fakeConntrack{deleteErr: map[string]error{}, vanish: map[string]bool{}}
			for _, s := range flows {
				ft.flows = append(ft.flows, ctFlow(t, s))
			}
			for i, err := range tc.deleteErr {
				ft.deleteErr[ft.flows[i].TupleOrig.String()] = err
			}
			for _, i := range tc.vanish {
				ft.vanish[ft.flows[i].TupleOrig.String()] = true
			}
			want := make([]string, 0, len(tc.wantLeft))
			for _, i := range tc.wantLeft {
				want = append(want, ft.flows[i].TupleOrig.String())
			}
			h := &HostPorts{log: zaptest.NewLogger(t),
				dialCT:     func() (conntrackTable, error) { ft.dials++; return ft, nil },
				localAddrs: func() ([]netip.Addr, error) { return local, nil }}
			n, err := h.cleanConntrack(tc.added, tc.removed)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
			got := []string{}
			for _, f := range ft.flows {
				got = append(got, f.TupleOrig.String())
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("entries left (-want +got):\n%s", diff)
			}
			if n != tc.wantDeleted {
				t.Errorf("deleted %d, want %d", n, tc.wantDeleted)
			}
			if ft.dials > 0 != (len(connectionlessOnly(tc.added))+len(connectionlessOnly(tc.removed)) > 0) || ft.dials > 0 && !ft.closed {
				t.Errorf("dialled %d times, closed %v", ft.dials, ft.closed)
			}
		})
	}
}

// TestLoopbackWithoutRelay: a HostPorts with no relay refuses loopback hostIPs as before, without
// touching the kernel.
func TestLoopbackWithoutRelay(t *testing.T) {
	h := NewHostPorts(HostPortsConfig{}, zaptest.NewLogger(t))
	m := PortMapping{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.1"}
	for _, err := range []error{
		h.Map(Attachment{ContainerID: "c1", IfName: "eth0"}, []netip.Addr{pod4}, []PortMapping{m}),
		h.Check(Attachment{ContainerID: "c1", IfName: "eth0"}, []netip.Addr{pod4}, []PortMapping{m}),
	} {
		var invalid *InvalidPortMappingError
		if !errors.As(err, &invalid) || invalid.Mapping != m || !strings.Contains(err.Error(), "no relay") {
			t.Errorf("%v, want an invalid mapping naming %s", err, m)
		}
	}
}
