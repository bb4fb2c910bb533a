package realnode_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

const agnhost = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"

var (
	installOnce sync.Once
	installErr  error
)

// installed makes sure nodenet is installed, so each test also runs alone.
func installed(t *testing.T) {
	t.Helper()
	installOnce.Do(func() { installErr = cluster.Install(context.Background(), "../../deploy") })
	if installErr != nil {
		t.Fatalf("kubectl apply -f deploy/: %v", installErr)
	}
}

// TestPodsServicesDNS is the smoke test of a user's first minutes: a Deployment spread over both
// nodes gets addresses from nodenet, its Service answers a pod on the other node, and the
// Service's name resolves through the node-local DNS.
func TestPodsServicesDNS(t *testing.T) {
	installed(t)
	ctx := t.Context()
	ns := createNamespace(t, "smoke")
	web := map[string]string{"app": "web"}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: web},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: web},
				Spec: corev1.PodSpec{
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
							LabelSelector: &metav1.LabelSelector{MatchLabels: web}, TopologyKey: "kubernetes.io/hostname"}},
					}},
					Containers: []corev1.Container{{Name: "web", Image: agnhost, Args: []string{"netexec", "--http-port=8080"},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 1}}},
				},
			},
		},
	}
	if _, err := cluster.CP.Client.AppsV1().Deployments(ns).Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: web, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	svc, err := cluster.CP.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods := waitPodsReady(t, ns, "app=web", 2)
	byNode := map[string]corev1.Pod{}
	for _, p := range pods {
		byNode[p.Spec.NodeName] = p
		node, err := cluster.CP.Client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !inPodCIDRs(p.Status.PodIP, node.Spec.PodCIDRs) {
			t.Errorf("pod %s on %s has %s, outside the node's podCIDRs %v", p.Name, p.Spec.NodeName, p.Status.PodIP, node.Spec.PodCIDRs)
		}
		t.Logf("pod %s on %s: %s (node podCIDRs %v)", p.Name, p.Spec.NodeName, p.Status.PodIP, node.Spec.PodCIDRs)
	}
	if len(byNode) != 2 {
		t.Fatalf("the Deployment's pods are not on two nodes: %v", byNode)
	}

	client := runClientPod(t, ns, cluster.Nodes[0].Name)
	other := byNode[cluster.Nodes[1].Name].Name
	seen := map[string]int{}
	for i := 0; i < 40 && seen[other] == 0; i++ {
		out, err := cluster.Kubectl("exec", "-n", ns, client, "--", "curl", "-sS", "--max-time", "5", "http://"+svc.Spec.ClusterIP+"/hostname")
		if err != nil {
			t.Fatalf("curl the Service's ClusterIP from %s: %v", client, err)
		}
		seen[strings.TrimSpace(out)]++
	}
	t.Logf("answers through ClusterIP %s from a pod on %s: %v", svc.Spec.ClusterIP, cluster.Nodes[0].Name, seen)
	if seen[other] == 0 {
		t.Errorf("the Service never reached %s on the other node: %v", other, seen)
	}

	resolv, err := cluster.Kubectl("exec", "-n", ns, client, "--", "cat", "/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resolv, "nameserver 169.254.20.10") {
		t.Errorf("the pod's resolv.conf does not name the node-local DNS (kubelet clusterDNS):\n%s", resolv)
	}
	out, err := cluster.Kubectl("exec", "-n", ns, client, "--", "nslookup", "web")
	if err != nil {
		t.Fatalf("nslookup web: %v", err)
	}
	t.Logf("nslookup web:\n%s", out)
	if !strings.Contains(out, "169.254.20.10") || !strings.Contains(out, "web."+ns+".svc.cluster.local") || !strings.Contains(out, svc.Spec.ClusterIP) {
		t.Errorf("nslookup did not answer web.%s.svc.cluster.local = %s through 169.254.20.10:\n%s", ns, svc.Spec.ClusterIP, out)
	}
}

func createNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns, err := cluster.CP.Client.CoreV1().Namespaces().Create(t.Context(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The cluster goes away with the package; deleting only keeps tests apart.
		_ = cluster.CP.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

// runClientPod starts an agnhost pod that only sleeps, on the given node, and waits until it runs.
func runClientPod(t *testing.T, ns, node string) string {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client-" + node, Namespace: ns, Labels: map[string]string{"role": "client-" + node}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers:                    []corev1.Container{{Name: "client", Image: agnhost, Args: []string{"pause"}}},
		},
	}
	if _, err := cluster.CP.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodsReady(t, ns, "role=client-"+node, 1)
	return pod.Name
}

// waitPodsReady waits until want pods match the selector and all are Ready.
func waitPodsReady(t *testing.T, ns, selector string, want int) []corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	for {
		list, err := cluster.CP.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil && len(list.Items) == want && !slices.ContainsFunc(list.Items, func(p corev1.Pod) bool { return !podReady(p) }) {
			return list.Items
		}
		select {
		case <-ctx.Done():
			out, _ := cluster.Kubectl("describe", "pods", "-n", ns, "-l", selector)
			t.Fatalf("pods %s in %s not ready: %v\n%s", selector, ns, err, out)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func inPodCIDRs(ip string, cidrs []string) bool {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(addr) {
			return true
		}
	}
	return false
}
