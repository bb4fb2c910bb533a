// Package realnode builds a Kubernetes cluster of real nodes on one machine: the lab's control
// plane (etcd, kube-apiserver, kube-controller-manager with its default controllers,
// kube-scheduler) and nodes that each run containerd, runc and kubelet in a network and mount
// namespace of their own. Nothing networks the pods until nodenet is installed the way a user
// installs it, `kubectl apply -f deploy/`. Read ../shared/REAL-NODES.md for the machine's facts
// this follows. Everything it creates is removed by Close, also after a failure.
package realnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodenet/nodenet/e2e/lab"
)

// Options say where the binaries are and how big the cluster is.
type Options struct {
	// ClusterBinDir holds etcd, kube-apiserver, kube-controller-manager and kubectl
	// (hack/cluster-bins.sh).
	ClusterBinDir string
	// NodeBinDir holds kubelet, kube-scheduler, containerd, ctr, containerd-shim-runc-v2 and
	// runc (hack/node-bins.sh).
	NodeBinDir string
	// Images is the docker-archive every node imports (package images): nodenet's image and
	// the test images.
	Images string
	// Prefix keeps the cluster's namespace names apart from any other lab's.
	Prefix string
	// Nodes is the number of nodes (default 2).
	Nodes int
}

// Cluster is a running real-node cluster.
type Cluster struct {
	Lab *lab.Lab
	CP  *lab.ControlPlane
	// Outside stands for the world beyond the cluster; Upstream is the DNS server on it that the
	// nodes' resolv.conf names.
	Outside  *lab.Netns
	Upstream *lab.UpstreamServer
	Nodes    []*Node

	opts Options
}

// Start brings the cluster up to registered nodes without a network: kubelet reports
// NetworkReady=false until a CNI configuration appears.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	for _, b := range []string{"kubelet", "kube-scheduler", "containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		if _, err := os.Stat(filepath.Join(opts.NodeBinDir, b)); err != nil {
			return nil, fmt.Errorf("node binaries (hack/node-bins.sh): %w", err)
		}
	}
	hs, err := hostHierarchies()
	if err != nil {
		return nil, err
	}
	// The lab's BinDir (nodenet's binaries) is not used: nodenet arrives as a DaemonSet image.
	l, err := lab.New("", opts.Prefix)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Lab: l, opts: opts}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()
	if c.Outside, err = l.AddOutside(); err != nil {
		return nil, err
	}
	if c.Upstream, err = c.Outside.ServeUpstreamDNS(lab.UpstreamDNS, map[string]string{"www.example.org": "198.18.0.201"}); err != nil {
		return nil, err
	}
	l.OnClose(func() error { c.Upstream.Stop(); return nil })
	if c.CP, err = l.StartControlPlaneForKubelets(ctx, opts.ClusterBinDir, filepath.Join(opts.NodeBinDir, "kube-scheduler")); err != nil {
		return nil, err
	}
	for i := 1; i <= opts.Nodes; i++ {
		n, err := c.startNode(ctx, i, hs)
		if err != nil {
			return nil, fmt.Errorf("node%d: %w", i, err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	if err := c.routeControlPlane(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// routeControlPlane gives the control plane's namespace the routes a control-plane host of a real
// cluster has, since it runs no nodenet of its own: each node's pod range via that node (the API
// server reaches pods for pods/proxy, the e2e suite's webservers among them) and the Service range
// via the first node.
func (c *Cluster) routeControlPlane(ctx context.Context) error {
	for _, n := range c.Nodes {
		var cidrs []string
		err := waitFor(ctx, time.Minute, n.kubelet, func(ctx context.Context) error {
			node, err := c.CP.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cidrs = node.Spec.PodCIDRs; len(cidrs) == 0 {
				return fmt.Errorf("node %s has no podCIDRs yet", n.Name)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, cidr := range cidrs {
			if _, err := c.CP.NS.Run("ip", "route", "add", cidr, "via", n.Address); err != nil {
				return err
			}
		}
	}
	_, err := c.CP.NS.Run("ip", "route", "add", lab.ServiceCIDR, "via", c.Nodes[0].Address)
	return err
}

// Close removes everything the cluster created.
func (c *Cluster) Close() error { return c.Lab.Close() }

// Kubectl runs kubectl as cluster admin.
func (c *Cluster) Kubectl(args ...string) (string, error) { return c.CP.Kubectl(args...) }

// Install applies nodenet's manifests exactly as a user does, `kubectl apply -f DIR`, and waits
// until every node is Ready and nodenet's DaemonSets have a ready pod on every node.
func (c *Cluster) Install(ctx context.Context, deployDir string) error {
	abs, err := filepath.Abs(deployDir)
	if err != nil {
		return err
	}
	if _, err := c.Kubectl("apply", "-f", abs); err != nil {
		return err
	}
	if err := c.WaitNodesReady(ctx, 3*time.Minute); err != nil {
		return err
	}
	for _, ds := range []string{"nodenet", "nodenet-dns-keeper"} {
		if err := c.waitDaemonSetReady(ctx, ds, 3*time.Minute); err != nil {
			return err
		}
	}
	return nil
}

// waitDaemonSetReady waits until the kube-system DaemonSet has a ready pod on every node
// (kubectl rollout status does not follow OnDelete DaemonSets such as the DNS keeper).
func (c *Cluster) waitDaemonSetReady(ctx context.Context, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ds, err := c.CP.Client.AppsV1().DaemonSets("kube-system").Get(ctx, name, metav1.GetOptions{})
		if err == nil && ds.Status.ObservedGeneration == ds.Generation &&
			ds.Status.DesiredNumberScheduled == int32(len(c.Nodes)) && ds.Status.NumberReady == ds.Status.DesiredNumberScheduled {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("DaemonSet %s not ready on every node after %v (%v):\n%s", name, timeout, err, c.diagnose())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// WaitNodesReady waits until every node reports Ready.
func (c *Cluster) WaitNodesReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var notReady []string
		for _, n := range c.Nodes {
			node, err := c.CP.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil || !nodeReady(node) {
				notReady = append(notReady, n.Name)
			}
		}
		if len(notReady) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes %s not Ready after %v:\n%s", strings.Join(notReady, ", "), timeout, c.diagnose())
		case <-time.After(time.Second):
		}
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// diagnose gathers what tells why a node is not Ready: node conditions, kube-system pods, and
// the tails of each node's kubelet and containerd logs.
func (c *Cluster) diagnose() string {
	var b strings.Builder
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "pods", "-A", "-o", "wide"},
		{"describe", "pods", "-n", "kube-system"},
	} {
		out, err := c.Kubectl(args...)
		fmt.Fprintf(&b, "$ kubectl %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
	}
	for _, n := range c.Nodes {
		for _, p := range []*lab.Process{n.kubelet, n.containerd} {
			if p != nil {
				fmt.Fprintf(&b, "--- %s (%s)\n%s\n", p.Name, p.Log, lab.Tail(p.Log, 25))
			}
		}
	}
	return b.String()
}
