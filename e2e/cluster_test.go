package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodenet/nodenet/e2e/lab"
)

// clusterBinDir returns the control plane's binaries, building them on first use (cached under
// $NODENET_CACHE). make test passes NODENET_CLUSTER_BIN_DIR.
func clusterBinDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("NODENET_CLUSTER_BIN_DIR"); dir != "" {
		return dir
	}
	cmd := exec.Command("../hack/cluster-bins.sh")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build the control plane: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// cluster is a lab with a control plane and nodenet's deploy/ RBAC applied.
type cluster struct {
	lab *lab.Lab
	cp  *lab.ControlPlane
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	l := newLab(t)
	cp, err := l.StartControlPlane(t.Context(), clusterBinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.ApplyDeploy("../deploy/rbac.yaml", "../deploy/policy.yaml"); err != nil {
		t.Fatal(err)
	}
	return &cluster{lab: l, cp: cp}
}

// join registers a node, starts its daemon with the identity of deploy/ and waits until ready.
func (c *cluster) join(t *testing.T, name string, index int, mode string) *lab.Node {
	t.Helper()
	n, err := c.cp.JoinNode(t.Context(), lab.NodeOptions{Name: name, Index: index,
		Config: map[string]any{"routing": map[string]any{"mode": mode}}})
	if err != nil {
		t.Fatal(err)
	}
	runDaemon(t, n)
	return n
}

func (c *cluster) pod(t *testing.T, n *lab.Node, name string) *lab.Pod {
	t.Helper()
	rt, err := n.Runtime()
	if err != nil {
		t.Fatal(err)
	}
	return addPod(t, c.lab, rt, name)
}

// eventually retries f until it succeeds or the timeout passes, returning how long it took.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = f(); err == nil {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
	return 0
}

// TestCrossNode runs two nodes against a real API server and controller manager, in each routing
// mode: each daemon learns its pod range from the Node kube-controller-manager allocated, and pods
// on different nodes reach each other with their own addresses (no NAT).
func TestCrossNode(t *testing.T) {
	for _, mode := range []string{"direct", "vxlan"} {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t)
			n1, n2 := c.join(t, "node1", 1, mode), c.join(t, "node2", 2, mode)
			if n1.PodCIDRs[0] == n2.PodCIDRs[0] {
				t.Fatalf("both nodes got %s", n1.PodCIDRs[0])
			}
			a, b := c.pod(t, n1, "xa"), c.pod(t, n2, "xb")
			for p, n := range map[*lab.Pod]*lab.Node{a: n1, b: n2} {
				if !strings.HasPrefix(p.IPs[0].String(), strings.TrimSuffix(n.PodCIDRs[0], "0/24")) {
					t.Errorf("pod %s got %s, outside its node's allocated range %s", p.Name, p.IPs[0], n.PodCIDRs[0])
				}
			}
			eventually(t, 10*time.Second, "ping pod node1 → pod node2", func() error { return a.NS.Ping(b.IPs[0].Addr().String()) })
			if err := b.NS.Ping(a.IPs[0].Addr().String()); err != nil {
				t.Errorf("ping pod node2 → pod node1: %v", err)
			}
			stop, err := b.NS.ServeRemoteAddr(":8080")
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			got, err := a.NS.AskRemoteAddr(t.Context(), net.JoinHostPort(b.IPs[0].Addr().String(), "8080"))
			if err != nil {
				t.Fatal(err)
			}
			if got != a.IPs[0].Addr().String() {
				t.Errorf("pod on node2 saw source %s, want the client pod's %s (no NAT between pods)", got, a.IPs[0].Addr())
			}
			if mode == "vxlan" {
				// 1400 bytes of payload + 28 of headers fit the pods' MTU (uplink 1500 - 50).
				if _, err := a.NS.Run("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", b.IPs[0].Addr().String()); err != nil {
					t.Errorf("1400-byte ping with DF over VXLAN: %v", err)
				}
				if out, err := n1.NS.Run("ip", "-d", "link", "show", "nodenet-vxlan"); err != nil || !strings.Contains(out, "vxlan id") {
					t.Errorf("node1 has no nodenet-vxlan device: %v %s", err, out)
				}
			}
			if mode == "direct" {
				testEndpointSlices(t, c, n1, a)
				testNodeJoinsAndLeaves(t, c, n1, a)
			}
		})
	}
}

// testNodeJoinsAndLeaves: a third node becomes reachable as soon as its daemon is up, and when its
// Node is deleted the routes to it disappear.
func testNodeJoinsAndLeaves(t *testing.T, c *cluster, n1 *lab.Node, a *lab.Pod) {
	n3 := c.join(t, "node3", 3, "direct")
	p3 := c.pod(t, n3, "xc")
	took := eventually(t, 10*time.Second, "ping pod node1 → pod on the new node3", func() error { return a.NS.Ping(p3.IPs[0].Addr().String()) })
	t.Logf("pod on node3 reachable from node1 %v after its daemon was ready", took.Round(time.Millisecond))

	if err := c.cp.DeleteNode(t.Context(), "node3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "routes to node3 removed on node1", func() error {
		out, err := n1.NS.Run("ip", "route", "show", n3.PodCIDRs[0])
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return errString("still routed: " + out)
		}
		return nil
	})

	// The Node comes back with another pod range (deleted and re-registered): its daemon must not
	// go on handing out addresses of the old range, which peers now route elsewhere.
	renewed := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node3"},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.99.0/24", PodCIDRs: []string{"10.244.99.0/24"}}}
	if _, err := c.cp.Client.CoreV1().Nodes().Create(t.Context(), renewed, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "node3's daemon stops on its changed podCIDRs", func() error {
		if exited, _ := n3.Exited(); !exited {
			return errString("still running")
		}
		return nil
	})
	if log := n3.LogTail(10); !strings.Contains(log, "spec.podCIDRs changed") {
		t.Errorf("daemon log does not say why it stopped:\n%s", log)
	}
}

// testEndpointSlices: a pod the harness publishes as the kubelet would appears in the
// EndpointSlice the real controller makes for a Service selecting it.
func testEndpointSlices(t *testing.T, c *cluster, n1 *lab.Node, a *lab.Pod) {
	ctx := t.Context()
	if err := c.cp.PublishPod(ctx, "test", map[string]string{"app": "xa"}, n1, a, 8080); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "xa", Namespace: "test"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "xa"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}}}}
	if _, err := c.cp.Client.CoreV1().Services("test").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "EndpointSlice of Service test/xa lists the pod", func() error {
		slices, err := c.cp.Client.DiscoveryV1().EndpointSlices("test").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=xa"})
		if err != nil {
			return err
		}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if len(e.Addresses) > 0 && e.Addresses[0] == a.IPs[0].Addr().String() && e.Conditions.Ready != nil && *e.Conditions.Ready {
					return nil
				}
			}
		}
		return errString("no ready endpoint " + a.IPs[0].Addr().String())
	})
}

type errString string

func (e errString) Error() string { return string(e) }

// TestDeployManifests: every manifest of deploy/ is accepted by a real API server (server-side
// dry run: schema, defaulting, admission, the CEL of the admission policy).
func TestDeployManifests(t *testing.T) {
	c := startCluster(t)
	dir, err := filepath.Abs("../deploy")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.cp.Kubectl("apply", "--dry-run=server", "-f", dir); err != nil {
		t.Fatalf("kubectl apply --dry-run=server -f deploy/: %v\n%s", err, out)
	}
}

// TestDaemonIdentityIsLeastPrivilege: with the identity deploy/ gives it, a daemon may annotate
// its own Node with nodenet.dev/ keys and nothing more: not another Node, not labels, not secrets
// or pods, never nodes/proxy. It reads Services and EndpointSlices and may change neither.
func TestDaemonIdentityIsLeastPrivilege(t *testing.T) {
	c := startCluster(t)
	n1, err := c.cp.JoinNode(t.Context(), lab.NodeOptions{Name: "node1", Index: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.cp.JoinNode(t.Context(), lab.NodeOptions{Name: "node2", Index: 2}); err != nil {
		t.Fatal(err)
	}
	asDaemon := func(args ...string) error {
		_, err := c.cp.NS.Run(append([]string{filepath.Join(c.cp.BinDir, "kubectl"), "--kubeconfig", n1.Kubeconfig}, args...)...)
		return err
	}
	// A real Node carries many annotations (kubelet's, the controllers', an admin's): the policy
	// must compare them whatever order it walks them in.
	others := []string{"annotate", "node", "node1"}
	for i := range 12 {
		others = append(others, fmt.Sprintf("example.com/a%d=v%d", i, i))
	}
	if _, err := c.cp.Kubectl(others...); err != nil {
		t.Fatal(err)
	}
	allowed := [][]string{
		{"get", "nodes"},
		{"annotate", "node", "node1", "nodenet.dev/vtep-mac=0e:4e:c6:12:00:0b", "--overwrite"},
		{"get", "services", "--all-namespaces"},
		{"get", "endpointslices.discovery.k8s.io", "--all-namespaces"},
	}
	denied := [][]string{
		{"annotate", "node", "node2", "nodenet.dev/vtep-mac=0e:4e:c6:12:00:0b"},
		{"annotate", "node", "node1", "example.com/other=x"},
		{"label", "node", "node1", "example.com/other=x"},
		{"get", "secrets", "-n", "kube-system"},
		{"auth", "can-i", "get", "nodes", "--subresource=proxy"}, // exits 1 for "no"
		{"delete", "node", "node2"},
		{"get", "pods", "--all-namespaces"},
		{"get", "endpoints", "--all-namespaces"},
		{"create", "service", "clusterip", "probe", "--tcp=80:80", "-n", "default"},
		{"auth", "can-i", "update", "services", "--subresource=status", "-n", "default"},
		{"auth", "can-i", "delete", "services", "-n", "default"},
		{"auth", "can-i", "create", "endpointslices.discovery.k8s.io", "-n", "default"},
		{"auth", "can-i", "patch", "endpointslices.discovery.k8s.io", "-n", "default"},
	}
	for i := range 10 {
		allowed = append(allowed, []string{"annotate", "node", "node1", fmt.Sprintf("nodenet.dev/probe=%d", i), "--overwrite"})
	}
	denied = append(denied,
		[]string{"annotate", "node", "node1", "example.com/a3=changed", "--overwrite"},
		[]string{"annotate", "node", "node1", "example.com/a5-"})
	for _, a := range allowed {
		if err := asDaemon(a...); err != nil {
			t.Errorf("daemon identity: %v should be allowed: %v", a, err)
		}
	}
	// The API server enforces an admission policy once its informers have seen it, a moment
	// after it was applied: wait for that, then every one must be denied.
	eventually(t, 20*time.Second, "admission policy in force", func() error {
		if asDaemon(denied[0]...) == nil {
			return errString("annotating another Node is still allowed")
		}
		return nil
	})
	for _, d := range denied {
		if err := asDaemon(d...); err == nil {
			t.Errorf("daemon identity: %v should be denied, and was allowed", d)
		}
	}
}
