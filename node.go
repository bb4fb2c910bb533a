package main

import (
	"context"
	"fmt"
	"net/netip"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"
)

// newKubeClient uses the in-cluster service account when kubeconfig is empty.
func newKubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %q: %w", kubeconfig, err)
	}
	rc.UserAgent = "nodenet/" + version
	return kubernetes.NewForConfig(rc)
}

// waitForPodCIDRs watches this node's Node object until the node IPAM controller (or the admin)
// has set spec.podCIDRs: a node that joins before its range is assigned must wait, not guess.
func waitForPodCIDRs(ctx context.Context, client kubernetes.Interface, nodeName string, log *zap.Logger) ([]netip.Prefix, error) {
	selector := fields.OneTermEqualSelector("metadata.name", nodeName).String()
	lw := &cache.ListWatch{
		ListFunc: func(opts metav1.ListOptions) (runtime.Object, error) {
			opts.FieldSelector = selector
			return client.CoreV1().Nodes().List(ctx, opts)
		},
		WatchFunc: func(opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = selector
			return client.CoreV1().Nodes().Watch(ctx, opts)
		},
	}
	var cidrs []netip.Prefix
	var parseErr error
	logged := false
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Node{}, nil, func(ev watch.Event) (bool, error) {
		node, ok := ev.Object.(*corev1.Node)
		if !ok {
			return false, nil
		}
		specCIDRs := node.Spec.PodCIDRs
		if len(specCIDRs) == 0 && node.Spec.PodCIDR != "" {
			specCIDRs = []string{node.Spec.PodCIDR}
		}
		if len(specCIDRs) == 0 {
			if !logged {
				log.Info("waiting for the Node to get spec.podCIDRs (assigned by kube-controller-manager --allocate-node-cidrs or set by hand)", zap.String("node", nodeName))
				logged = true
			}
			return false, nil
		}
		cidrs, parseErr = parsePrefixes(specCIDRs)
		return true, parseErr
	})
	if err != nil {
		return nil, fmt.Errorf("wait for podCIDRs of node %s: %w", nodeName, err)
	}
	log.Info("node podCIDRs", zap.String("node", nodeName), zap.Stringers("podCIDRs", cidrs))
	return cidrs, nil
}

func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("node podCIDR %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
