package e2e

import (
	"net"
	"net/netip"
	"testing"

	"github.com/nodenet/nodenet/e2e/lab"
)

// TestDualStack gives pods one IPv4 and one IPv6 address and checks both families end to end,
// including that the IPv6 address is usable at once (no DAD wait).
func TestDualStack(t *testing.T) {
	l := newLab(t)
	node := startNode(t, l, lab.NodeOptions{
		Name: "node1", Index: 1,
		PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
		Config:   map[string]any{"clusterCIDRs": []string{"10.244.0.0/16", "fd00:10:244::/48"}},
	})
	rt, err := node.Runtime()
	if err != nil {
		t.Fatal(err)
	}
	a, b := addPod(t, l, rt, "da"), addPod(t, l, rt, "db")
	for _, p := range []*lab.Pod{a, b} {
		if len(p.IPs) != 2 || !p.IPs[0].Addr().Is4() || !p.IPs[1].Addr().Is6() {
			t.Fatalf("pod %s got %v, want an IPv4 then an IPv6 address", p.Name, p.IPs)
		}
		if !netip.MustParsePrefix("fd00:10:244:1::/64").Contains(p.IPs[1].Addr()) {
			t.Errorf("pod %s IPv6 %s is outside the node's range", p.Name, p.IPs[1])
		}
		if err := rt.Check(t.Context(), p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	// Right after ADD, without waiting: a tentative address would fail this bind.
	stop, err := b.NS.ServeRemoteAddr(net.JoinHostPort(b.IPs[1].Addr().String(), "8080"))
	if err != nil {
		t.Fatalf("bind to the pod's IPv6 address right after ADD: %v", err)
	}
	defer stop()
	got, err := a.NS.AskRemoteAddr(t.Context(), net.JoinHostPort(b.IPs[1].Addr().String(), "8080"))
	if err != nil {
		t.Fatal(err)
	}
	if got != a.IPs[1].Addr().String() {
		t.Errorf("IPv6 pod b saw source %s, want %s", got, a.IPs[1].Addr())
	}
	if err := a.NS.Ping("fd00:10:244:1::1"); err != nil {
		t.Errorf("pod to IPv6 gateway: %v", err)
	}
	if err := a.NS.Ping(b.IPs[0].Addr().String()); err != nil {
		t.Errorf("IPv4 pod to pod: %v", err)
	}
}
