package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodenet/nodenet/e2e/lab"
	"github.com/nodenet/nodenet/hack/internal/background"
)

// articlePod is one pod of the seed article's lab.
type articlePod struct {
	name, namespace, app string
	node                 int // index into the nodes
	serves               bool
}

var articlePods = []articlePod{
	{name: "default-nginx", namespace: "default", app: "default-nginx", node: 0, serves: true},
	{name: "default-test", namespace: "default", app: "default-test", node: 1},
	{name: "test-nginx", namespace: "test", app: "test-nginx", node: 1, serves: true},
}

// serve builds the cluster, shows the lab, prints the ready marker and keeps everything running
// until SIGTERM or SIGINT, then removes it all.
func serve(ctl background.Control, bin, clusterBin, prefix string) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	l, err := lab.New(abs, prefix)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Printf("\n%s\n", background.CleanupHeading)
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Println("all namespaces, processes and files of the demo are removed")
	}()
	var c checks
	if err := show(ctx, l, ctl, clusterBin, &c); err != nil {
		return err
	}
	if c.failed > 0 {
		return fmt.Errorf("%d checks failed", c.failed)
	}
	fmt.Println(background.ReadyMarker)
	<-ctx.Done()
	return nil
}

func show(ctx context.Context, l *lab.Lab, ctl background.Control, clusterBin string, c *checks) error {
	section("Starting the control plane (etcd, kube-apiserver, kube-controller-manager) in its own namespace")
	cp, err := l.StartControlPlane(ctx, clusterBin)
	if err != nil {
		return err
	}
	if err := ctl.WriteState(background.State{PID: os.Getpid(), ControlPlaneNS: cp.NS.Name, AdminKubeconfig: cp.AdminKubeconfig, ClusterBin: clusterBin}); err != nil {
		return err
	}
	fmt.Printf("API server %s\n", cp.Server)
	if err := cp.ApplyDeploy("deploy/rbac.yaml", "deploy/policy.yaml"); err != nil {
		return err
	}
	fmt.Println("applied deploy/rbac.yaml and deploy/policy.yaml: the daemons run with exactly that identity")

	section("Joining two nodes; each runs `nodenet daemon` and learns its pod range from its Node")
	var nodes []*lab.Node
	for i := 1; i <= 2; i++ {
		n, err := cp.JoinNode(ctx, lab.NodeOptions{Name: fmt.Sprintf("node%d", i), Index: i})
		if err != nil {
			return err
		}
		if err := n.Start(); err != nil {
			return err
		}
		if err := n.WaitReady(ctx); err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	if out, err := cp.Kubectl("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,INTERNAL-IP:.status.addresses[0].address,POD-CIDRS:.spec.podCIDRs,VTEP-MAC:.metadata.annotations.nodenet\\.dev/vtep-mac"); err == nil {
		fmt.Print(out)
	}

	section("Creating the article's pods through libcni (as containerd does) and publishing them (as the kubelet does)")
	pods := map[string]*lab.Pod{}
	for _, ap := range articlePods {
		n := nodes[ap.node]
		rt, err := n.Runtime()
		if err != nil {
			return err
		}
		p, err := l.NewPod(ap.name)
		if err != nil {
			return err
		}
		start := time.Now()
		if err := rt.Add(ctx, p); err != nil {
			return fmt.Errorf("ADD %s: %w", ap.name, err)
		}
		took := time.Since(start)
		if ap.serves {
			if err := serveHTTP(p); err != nil {
				return err
			}
		}
		if err := cp.PublishPod(ctx, ap.namespace, map[string]string{"app": ap.app}, n, p, 80); err != nil {
			return err
		}
		pods[ap.name] = p
		fmt.Printf("%-10s %-14s on %s  %-16s (CNI ADD took %v)\n", ap.namespace, ap.name, n.Name, p.IPs[0], took.Round(time.Millisecond))
	}

	section("Pod to pod across nodes (no NAT: the server sees the client pod's own address)")
	test := pods["default-test"]
	for _, target := range []string{"default-nginx", "test-nginx"} {
		addr := pods[target].IPs[0].Addr().String()
		c.report(fmt.Sprintf("ping default-test → %s (%s)", target, addr), test.NS.Ping(addr))
		body, err := httpGet(ctx, test.NS, addr)
		c.report(fmt.Sprintf("curl http://%s/ from default-test → %q", addr, body), err)
	}
	if out, err := nodes[0].NS.Run("ip", "route", "show", "proto", "0x4e"); err == nil {
		fmt.Print("\nroutes node1 keeps to the other node's pods (nodenet's route protocol 0x4e):\n", out)
	}

	section("The article's Services")
	if err := createServices(ctx, cp); err != nil {
		return err
	}
	if out, err := cp.Kubectl("get", "services", "-A", "-o", "wide"); err == nil {
		fmt.Print(out)
	}
	waitForSlices(ctx, cp, 3)
	if out, err := cp.Kubectl("get", "endpointslices", "-A"); err == nil {
		fmt.Print("\n", out)
	}
	showServiceRules(nodes[0])

	section("Reaching the Services (load-balanced by nodenet in nftables; no kube-proxy runs)")
	for _, svc := range []struct{ ns, name string }{{"default", "default-svc"}, {"test", "test-svc"}, {"default", "nginx-svc"}} {
		s, err := cp.Client.CoreV1().Services(svc.ns).Get(ctx, svc.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		addr := net.JoinHostPort(s.Spec.ClusterIP, "80")
		body, err := retryGet(ctx, test.NS, addr)
		c.report(fmt.Sprintf("curl http://%s/ (ClusterIP of %s/%s) from pod default-test → %q", addr, svc.ns, svc.name, body), err)
	}
	for _, n := range nodes {
		addr := net.JoinHostPort(n.Address, "30080")
		body, err := retryGet(ctx, cp.NS, addr)
		c.report(fmt.Sprintf("curl http://%s/ (NodePort of default/nginx-svc on %s) from outside the cluster → %q", addr, n.Name, body), err)
	}
	return showDNS(ctx, l, test, pods["default-nginx"], c)
}

// showDNS replays the article's name lookups from pod default-test, with the resolv.conf kubelet
// writes for a pod of namespace default: nodenet answers them at 169.254.20.10 on the pod's node,
// and forwards external names to an upstream server standing for the world's DNS.
func showDNS(ctx context.Context, l *lab.Lab, client, nginx *lab.Pod, c *checks) error {
	section("Names (node-local DNS at 169.254.20.10, served by nodenet from the same state as the Services)")
	outside, err := l.AddOutside()
	if err != nil {
		return err
	}
	if _, err := outside.ServeUpstreamDNS(lab.UpstreamDNS, map[string]string{"www.example.com": "192.0.2.80"}); err != nil {
		return err
	}
	resolvConf := lab.PodResolvConf("default")
	fmt.Printf("resolv.conf of pod default-test (as kubelet writes it with clusterDNS 169.254.20.10):\n%s\n", resolvConf)
	podName := strings.ReplaceAll(nginx.IPs[0].Addr().String(), ".", "-") + ".default.pod.cluster.local"
	for _, q := range []struct {
		what string
		args []string
		fail bool // the article's point: a short name does not cross namespaces
	}{
		{"full name", []string{"default-svc.default.svc.cluster.local"}, false},
		{"short name, same namespace", []string{"+search", "default-svc"}, false},
		{"short name, other namespace (no answer, as in the article)", []string{"+search", "test-svc"}, true},
		{"<service>.<namespace>", []string{"+search", "test-svc.test"}, false},
		{"pod A record", []string{podName}, false},
		{"external name, forwarded and cached", []string{"+search", "www.example.com"}, false},
	} {
		var out string
		err := retry(ctx, func() error {
			var err error
			out, err = client.NS.RunWithResolvConf(resolvConf, append([]string{"dig", "+short", "+time=2", "+tries=2"}, q.args...)...)
			out = strings.TrimSpace(out)
			if err == nil && (out == "") != q.fail {
				return fmt.Errorf("answer %q", out)
			}
			return err
		})
		if out == "" {
			out = "(no such name)"
		}
		c.report(fmt.Sprintf("dig %s  — %s → %s", strings.Join(q.args, " "), q.what, out), err)
	}
	return nil
}

// retry runs f until it succeeds, for up to 10 seconds: a new Service takes a moment to be
// programmed on every node.
func retry(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// showServiceRules prints, from every nodenet table on the node, the verdict maps that send the
// Services' addresses to their chains, the backend maps of the ClusterIP-only Services, and the
// chains of nginx-svc.
func showServiceRules(n *lab.Node) {
	out, err := n.NS.Run("nft", "list", "ruleset")
	if err != nil {
		return
	}
	fmt.Printf("\nnodenet's Service rules on %s (from nft list ruleset: Services are spread over the shard\ntables nodenet-svc-NN; shown are their non-empty service maps, the backend maps that ClusterIP-only\nServices share, and the chains of nginx-svc):\n", n.Name)
	table := ""
	var block []string
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "table "):
			table = strings.TrimSuffix(trimmed, " {")
		case strings.HasPrefix(trimmed, "map ") || strings.HasPrefix(trimmed, "chain "):
			block = []string{line}
		case block != nil:
			block = append(block, line)
			if trimmed != "}" {
				continue
			}
			head := strings.TrimSpace(block[0])
			serviceMap := (strings.HasPrefix(head, "map service-ips-v4") || strings.HasPrefix(head, "map service-nodeports-v4") ||
				strings.HasPrefix(head, "map backends-v4")) &&
				strings.Contains(strings.Join(block, "\n"), "elements")
			if serviceMap || strings.Contains(head, "default/nginx-svc/") {
				fmt.Printf("\t# %s\n%s\n", table, strings.Join(block, "\n"))
			}
			block = nil
		}
	}
}

// retryGet fetches http://addr/ from inside ns, allowing the Service's rules a few seconds to
// reach the node after its EndpointSlice appeared.
func retryGet(ctx context.Context, from netDialer, addr string) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		body, err := httpGet(ctx, from, addr)
		if err == nil || time.Now().After(deadline) {
			return body, err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitForSlices gives the endpointslice controller up to ten seconds to publish the Services'
// slices, so the listing shows them; the demo goes on either way.
func waitForSlices(ctx context.Context, cp *lab.ControlPlane, services int) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		list, err := cp.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"})
		if err == nil && len(list.Items) >= services {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func createServices(ctx context.Context, cp *lab.ControlPlane) error {
	svcs := []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "default-svc", Namespace: "default"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "default-nginx"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "test-svc", Namespace: "test"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "test-nginx"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "nginx-svc", Namespace: "default"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "default-nginx"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80), NodePort: 30080}}}},
	}
	for _, s := range svcs {
		if _, err := cp.Client.CoreV1().Services(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create service %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	return nil
}

// serveHTTP stands in for nginx: a small HTTP server on port 80 inside the pod, running until the
// pod's namespace goes away with the lab.
func serveHTTP(p *lab.Pod) error {
	l, err := p.NS.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", p.Name)
	}), ReadHeaderTimeout: 5 * time.Second}
	// Serve ends when the demo process exits; there is nothing to report then.
	go srv.Serve(l)
	return nil
}

// netDialer is a namespace to dial from: a pod's or the control plane's.
type netDialer interface {
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
}

func httpGet(ctx context.Context, from netDialer, addr string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return from.Dial(ctx, network, a) },
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

func section(title string) { fmt.Printf("\n=== %s\n", title) }

// checks counts what the demo showed failing, so `make demo` exits non-zero when nodenet is broken.
type checks struct{ failed int }

func (c *checks) report(what string, err error) {
	if err != nil {
		c.failed++
		fmt.Printf("FAIL %s: %v\n", what, err)
		return
	}
	fmt.Printf("ok   %s\n", what)
}
