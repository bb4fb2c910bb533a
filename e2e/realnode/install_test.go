package realnode_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The tests run in file order: this file's name puts the install first, as a user's first step.

// TestInstallFromDeploy installs nodenet as a user does on nodes whose kubelet reports no
// network: kubectl apply -f deploy/, nothing else.
func TestInstallFromDeploy(t *testing.T) {
	ctx := t.Context()
	for _, n := range cluster.Nodes {
		node, err := cluster.CP.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				t.Logf("%s before the install: Ready=%s (%s)", n.Name, c.Status, c.Message)
				if c.Status == corev1.ConditionTrue {
					t.Errorf("%s is Ready before any network is installed", n.Name)
				}
			}
		}
	}
	start := time.Now()
	installed(t)
	t.Logf("every node Ready %v after kubectl apply -f deploy/", time.Since(start).Round(100*time.Millisecond))

	pods, err := cluster.CP.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if strings.Contains(p.Name, "kube-proxy") || strings.Contains(p.Name, "coredns") {
			t.Errorf("pod %s/%s: nodenet must be the only network component", p.Namespace, p.Name)
		}
	}
	ds, err := cluster.CP.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "nodenet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Status.NumberReady != int32(len(cluster.Nodes)) {
		t.Errorf("DaemonSet nodenet: %d of %d pods ready", ds.Status.NumberReady, len(cluster.Nodes))
	}
}
