package realnode

import (
	"context"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodenet/nodenet/e2e/lab"
)

// PodNetns returns the network namespace of a running pod, reached through the process of its
// first container, so that a test can open sockets inside the pod as its own process would.
func (c *Cluster) PodNetns(ctx context.Context, namespace, name string) (*lab.Netns, error) {
	pod, err := c.CP.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].ContainerID == "" {
		return nil, fmt.Errorf("pod %s/%s has no running container yet", namespace, name)
	}
	_, id, _ := strings.Cut(pod.Status.ContainerStatuses[0].ContainerID, "://")
	node := c.Node(pod.Spec.NodeName)
	if node == nil {
		return nil, fmt.Errorf("pod %s/%s runs on %q, not a node of this cluster", namespace, name, pod.Spec.NodeName)
	}
	out, err := node.ctr(ctx, "tasks", "ls")
	if err != nil {
		return nil, err
	}
	// TASK PID STATUS
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			return lab.NetnsAt(namespace+"/"+name, "/proc/"+f[1]+"/ns/net"), nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s: container %s is not running on %s", namespace, name, id, node.Name)
}

// Node returns the node of that name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}
