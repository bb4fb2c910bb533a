package routing

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMasqueradeRulesGolden(t *testing.T) {
	rules := masqueradeRules(dualStack.Bridge, dualStack.PodCIDRs, dualStack.ClusterCIDRs)
	var got []string
	for _, r := range rules {
		got = append(got, r.String())
	}
	want := `
oifname "nodenet0" return
ip daddr 10.244.0.0/16 return
ip6 daddr fd00:10:244::/56 return
ip saddr 10.244.1.0/24 masquerade
ip6 saddr fd00:10:244:1::/64 masquerade`
	if diff := cmp.Diff(strings.TrimSpace(want), strings.Join(got, "\n")); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
}

// packet is what the pod-masquerade chain looks at.
type packet struct {
	oif      string
	src, dst string
}

// trace walks the rules the way the kernel walks the chain and returns the verdict:
// "return" or "masquerade" from the first matching rule, "accept" (the policy) otherwise.
func trace(rules []natRule, p packet) string {
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	for _, r := range rules {
		if r.oifname != "" && r.oifname != p.oif {
			continue
		}
		if r.saddr.IsValid() && !r.saddr.Contains(src) {
			continue
		}
		if r.daddr.IsValid() && !r.daddr.Contains(dst) {
			continue
		}
		return map[natAction]string{natReturn: "return", natMasquerade: "masquerade"}[r.action]
	}
	return "accept"
}

func TestMasqueradeTrace(t *testing.T) {
	rules := masqueradeRules(dualStack.Bridge, dualStack.PodCIDRs, dualStack.ClusterCIDRs)
	for _, tc := range []struct {
		name string
		pkt  packet
		want string
	}{
		{"pod to pod on node", packet{"nodenet0", "10.244.1.2", "10.244.1.3"}, "return"},
		{"service hairpin back to a pod", packet{"nodenet0", "10.244.1.2", "10.244.1.2"}, "return"},
		{"pod to pod on another node", packet{"eth0", "10.244.1.2", "10.244.2.7"}, "return"},
		{"pod to outside", packet{"eth0", "10.244.1.2", "198.18.0.100"}, "masquerade"},
		{"node to outside", packet{"eth0", "198.18.0.2", "198.18.0.100"}, "accept"},
		{"outside to pod", packet{"nodenet0", "198.18.0.100", "10.244.1.2"}, "return"},
		{"other node's pod range is not ours to masquerade", packet{"eth0", "10.244.2.7", "198.18.0.100"}, "accept"},
		{"ipv6 pod to pod on another node", packet{"eth0", "fd00:10:244:1::2", "fd00:10:244:2::7"}, "return"},
		{"ipv6 pod to outside", packet{"eth0", "fd00:10:244:1::2", "2001:db8::1"}, "masquerade"},
		{"ipv6 pod to pod on node", packet{"nodenet0", "fd00:10:244:1::2", "fd00:10:244:1::3"}, "return"},
		{"bridge name is matched whole", packet{"nodenet01", "10.244.1.2", "198.18.0.100"}, "masquerade"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := trace(rules, tc.pkt); got != tc.want {
				t.Errorf("trace(%+v) = %s, want %s", tc.pkt, got, tc.want)
			}
		})
	}
}

func TestHostVethName(t *testing.T) {
	got := HostVethName("0123456789abcdef", "eth0")
	if got != HostVethName("0123456789abcdef", "eth0") {
		t.Fatal("not deterministic")
	}
	if len(got) > 15 || !strings.HasPrefix(got, "nn") {
		t.Errorf("HostVethName = %q, want nn prefix and at most 15 characters", got)
	}
	if got == HostVethName("0123456789abcdef", "net1") {
		t.Error("different interfaces of one container share a name")
	}
	// printf '0123456789abcdef/eth0' | sha256sum
	if want := "nn60373cf9024d"; got != want {
		t.Errorf("HostVethName = %q, want %q", got, want)
	}
}
