package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/e2e/lab"
	"github.com/nodenet/nodenet/ipam"
)

// TestPodNetworking drives one node the way a runtime does and checks real packets: pod↔pod on the
// node (ICMP and TCP), pod→node, pod→outside masqueraded to the node address with replies
// delivered, and CHECK/DEL through libcni.
func TestPodNetworking(t *testing.T) {
	l := newLab(t)
	outside, err := l.AddOutside()
	if err != nil {
		t.Fatal(err)
	}
	node := startNode(t, l, lab.NodeOptions{Name: "node1", Index: 1})
	rt, err := node.Runtime()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	a, b := addPod(t, l, rt, "pa"), addPod(t, l, rt, "pb")
	range1 := netip.MustParsePrefix("10.244.1.0/24")
	for _, p := range []*lab.Pod{a, b} {
		if len(p.IPs) != 1 || !range1.Contains(p.IPs[0].Addr()) {
			t.Fatalf("pod %s got %v, want one address in %s", p.Name, p.IPs, range1)
		}
		if err := rt.Check(ctx, p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	checkResultShape(t, a)

	t.Run("pod to pod ICMP", func(t *testing.T) {
		if err := a.NS.Ping(b.IPs[0].Addr().String()); err != nil {
			t.Error(err)
		}
	})
	t.Run("pod to pod TCP keeps the source address", func(t *testing.T) {
		stop, err := b.NS.ServeRemoteAddr(":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		got, err := a.NS.AskRemoteAddr(ctx, net.JoinHostPort(b.IPs[0].Addr().String(), "8080"))
		if err != nil {
			t.Fatal(err)
		}
		if got != a.IPs[0].Addr().String() {
			t.Errorf("pod b saw source %s, want pod a's %s (no NAT between pods)", got, a.IPs[0].Addr())
		}
	})
	t.Run("pod to node", func(t *testing.T) {
		for _, addr := range []string{"10.244.1.1", node.Address} {
			if err := a.NS.Ping(addr); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("pod to outside is masqueraded and replies come back", func(t *testing.T) {
		stop, err := outside.ServeRemoteAddr(":8081")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		got, err := a.NS.AskRemoteAddr(ctx, net.JoinHostPort(lab.OutsideAddr, "8081"))
		if err != nil {
			t.Fatal(err)
		}
		if got != node.Address {
			t.Errorf("outside saw source %s, want the node address %s", got, node.Address)
		}
		if err := a.NS.Ping(lab.OutsideAddr); err != nil {
			t.Error(err)
		}
	})
	t.Run("DEL is idempotent and leaves nothing", func(t *testing.T) {
		for _, p := range []*lab.Pod{a, b} {
			for range 2 {
				if err := rt.Del(ctx, p); err != nil {
					t.Fatalf("DEL %s: %v", p.Name, err)
				}
			}
		}
		if v := podVeths(t, node); len(v) != 0 {
			t.Errorf("veths left after DEL: %v", v)
		}
	})
}

// checkResultShape verifies the result is shaped like the reference bridge plugin's.
func checkResultShape(t *testing.T, p *lab.Pod) {
	t.Helper()
	r := p.Result
	if len(r.Interfaces) != 3 {
		t.Fatalf("result has %d interfaces, want bridge, host veth, container interface: %+v", len(r.Interfaces), r.Interfaces)
	}
	if r.Interfaces[0].Name != "nodenet0" || !strings.HasPrefix(r.Interfaces[1].Name, "nn") ||
		r.Interfaces[2].Name != "eth0" || r.Interfaces[2].Sandbox != p.NS.Path() {
		t.Errorf("result interfaces = %+v %+v %+v", *r.Interfaces[0], *r.Interfaces[1], *r.Interfaces[2])
	}
	for _, ip := range r.IPs {
		if ip.Interface == nil || *ip.Interface != 2 {
			t.Errorf("ips[].interface = %v, want 2 (the container interface)", ip.Interface)
		}
		if ip.Gateway.String() != "10.244.1.1" {
			t.Errorf("ips[].gateway = %v, want 10.244.1.1", ip.Gateway)
		}
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("routes = %v, want the default route", r.Routes)
	}
}

// TestConfigVersions runs ADD, CHECK and DEL with every supported conflist version.
func TestConfigVersions(t *testing.T) {
	l := newLab(t)
	node := startNode(t, l, lab.NodeOptions{Name: "node1", Index: 1})
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			rt, err := node.Runtime()
			if err != nil {
				t.Fatal(err)
			}
			conf, err := libcni.ConfListFromBytes(withVersion(t, rt.List.Bytes, v))
			if err != nil {
				t.Fatal(err)
			}
			rt.List = conf
			p, err := l.NewPod("v" + strings.ReplaceAll(v, ".", ""))
			if err != nil {
				t.Fatal(err)
			}
			if err := rt.Add(t.Context(), p); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if p.Result.CNIVersion != "1.1.0" && len(p.IPs) != 1 {
				t.Errorf("result %+v", p.Result)
			}
			if v != "0.3.1" { // CHECK exists from 0.4.0 on
				if err := rt.Check(t.Context(), p); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if err := p.NS.Ping("10.244.1.1"); err != nil {
				t.Error(err)
			}
			if err := rt.Del(t.Context(), p); err != nil {
				t.Errorf("DEL: %v", err)
			}
		})
	}
}

func withVersion(t *testing.T, conflist []byte, v string) []byte {
	t.Helper()
	s := string(conflist)
	s = strings.Replace(s, `"cniVersion": "1.1.0"`, fmt.Sprintf(`"cniVersion": %q`, v), 1)
	// cniVersions (CNI 1.1) would override cniVersion; the older runtimes this stands for do
	// not know the key.
	if i := strings.Index(s, `"cniVersions"`); i >= 0 {
		j := strings.Index(s[i:], "]")
		s = s[:i] + `"x-cniVersions": null` + s[i+j+1:]
	}
	return []byte(s)
}

// TestConcurrentAdds networks 100 pods at once, checks every address is distinct and reachable,
// then deletes them all at once and checks nothing is left: no veth, no allocation on disk.
func TestConcurrentAdds(t *testing.T) {
	l := newLab(t)
	node, rt := startNodeRuntime(t, l)
	all := newPods(t, l, "c", 100)
	ctx := t.Context()
	runAll(t, all, func(p *lab.Pod) error { return rt.Add(ctx, p) })
	seen := map[netip.Addr]string{}
	range1 := netip.MustParsePrefix("10.244.1.0/24")
	for _, p := range all {
		addr := p.IPs[0].Addr()
		if other, dup := seen[addr]; dup {
			t.Fatalf("pods %s and %s both got %s", other, p.Name, addr)
		}
		seen[addr] = p.Name
		if !range1.Contains(addr) || addr == netip.MustParseAddr("10.244.1.1") {
			t.Errorf("pod %s got %s, outside the usable part of %s", p.Name, addr, range1)
		}
	}
	runAll(t, all, func(p *lab.Pod) error { return node.NS.Ping(p.IPs[0].Addr().String()) })
	runAll(t, all, func(p *lab.Pod) error { return rt.Del(ctx, p) })
	if v := podVeths(t, node); len(v) != 0 {
		t.Errorf("%d veths left after DEL: %v", len(v), v)
	}
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	if left := allocations(t, node); len(left) != 0 {
		t.Errorf("%d allocations left on disk after DEL: %v", len(left), left)
	}
}

// startNodeRuntime starts a standalone node and returns it with its runtime.
func startNodeRuntime(t *testing.T, l *lab.Lab) (*lab.Node, *lab.Runtime) {
	t.Helper()
	node := startNode(t, l, lab.NodeOptions{Name: "node1", Index: 1})
	rt, err := node.Runtime()
	if err != nil {
		t.Fatal(err)
	}
	return node, rt
}

// newPods creates count pod namespaces named prefix0, prefix1, ...
func newPods(t *testing.T, l *lab.Lab, prefix string, count int) []*lab.Pod {
	t.Helper()
	all := make([]*lab.Pod, count)
	for i := range all {
		var err error
		if all[i], err = l.NewPod(fmt.Sprintf("%s%d", prefix, i)); err != nil {
			t.Fatal(err)
		}
	}
	return all
}

// runAll runs f for every pod at once and fails the test with every error.
func runAll(t *testing.T, pods []*lab.Pod, f func(*lab.Pod) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(pods))
	for i, p := range pods {
		wg.Go(func() { errs[i] = f(p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pod %s: %v", pods[i].Name, err)
		}
	}
}

// allocations reads the node's IPAM state from disk; the daemon must be stopped.
func allocations(t *testing.T, n *lab.Node) []ipam.Allocation {
	t.Helper()
	var ranges []netip.Prefix
	for _, c := range n.PodCIDRs {
		ranges = append(ranges, netip.MustParsePrefix(c))
	}
	a, err := ipam.Open(ipam.Config{StateDir: n.StateDir, Ranges: ranges}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	return a.List()
}

func addPod(t *testing.T, l *lab.Lab, rt *lab.Runtime, name string) *lab.Pod {
	t.Helper()
	p, err := l.NewPod(name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := rt.Add(ctx, p); err != nil {
		t.Fatalf("ADD %s: %v", name, err)
	}
	return p
}
