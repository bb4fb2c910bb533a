package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodenet/nodenet/config"
	"github.com/nodenet/nodenet/hub"
	"github.com/nodenet/nodenet/kubeapi"
)

// kubeAPI is what the daemon asks of the API server: kubeapi.Client, or in tests a fake.
type kubeAPI interface {
	hub.API
	Node(name string) cache.ListerWatcher
	GetNode(ctx context.Context, name string) (*corev1.Node, error)
	PatchNode(ctx context.Context, name string, mergePatch []byte) error
}

// newKubeClient uses the in-cluster service account when kubeconfig is empty, connecting where
// inClusterServer says.
func newKubeClient(kubeconfig string, apiServer config.APIServer, log *zap.Logger) (*kubeapi.Client, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster service account (kubeconfig: \"\"): %w", err)
		}
		server, source, err := inClusterServer(apiServer)
		if err != nil {
			return nil, err
		}
		if server != "" {
			rc.Host = server
		}
		log.Info("API server", zap.String("server", rc.Host), zap.String("from", source))
	} else if rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("kubeconfig %q: %w", kubeconfig, err)
	}
	rc.UserAgent = "nodenet/" + version
	// Protobuf, as kube-proxy and the kubelet use: a node lists every Service and EndpointSlice
	// of the cluster at start, and decoding JSON costs several times the CPU and transient
	// memory. Patches keep their own JSON content types.
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return kubeapi.New(rc)
}

// retryInterval paces re-listing the Node after an API error or a closed watch.
const retryInterval = time.Second

// waitForPodCIDRs watches this node's Node object until the node IPAM controller (or the admin)
// has set spec.podCIDRs: a node that joins before its range is assigned must wait, not guess.
// API errors are retried (the apiserver may come up after the node); a malformed range is not.
func waitForPodCIDRs(ctx context.Context, api kubeAPI, nodeName string, log *zap.Logger) ([]netip.Prefix, error) {
	node := cache.ToListerWatcherWithContext(api.Node(nodeName))
	log.Info("waiting for the Node to have spec.podCIDRs (assigned by kube-controller-manager --allocate-node-cidrs, or set podCIDRs in the config)",
		zap.String("node", nodeName))
	for {
		list, err := listNodes(ctx, node)
		if err == nil {
			for i := range list.Items {
				if cidrs, found, err := nodePodCIDRs(&list.Items[i]); found || err != nil {
					return logCIDRs(log, nodeName, cidrs, err)
				}
			}
			var w watch.Interface
			w, err = node.WatchWithContext(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
			if err == nil {
				cidrs, found, err := watchPodCIDRs(w)
				if found || err != nil {
					return logCIDRs(log, nodeName, cidrs, err)
				}
			}
		}
		if err != nil {
			log.Warn("read Node from the API server; retrying", zap.String("node", nodeName), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for podCIDRs of node %s: %w", nodeName, ctx.Err())
		case <-time.After(retryInterval):
		}
	}
}

func listNodes(ctx context.Context, lw cache.ListerWatcherWithContext) (*corev1.NodeList, error) {
	obj, err := lw.ListWithContext(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	list, ok := obj.(*corev1.NodeList)
	if !ok {
		return nil, fmt.Errorf("listing nodes returned a %T", obj)
	}
	return list, nil
}

// watchPodCIDRs consumes w until the node has podCIDRs or the watch ends.
func watchPodCIDRs(w watch.Interface) ([]netip.Prefix, bool, error) {
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type != watch.Added && ev.Type != watch.Modified {
			continue
		}
		if node, ok := ev.Object.(*corev1.Node); ok {
			if cidrs, found, err := nodePodCIDRs(node); found || err != nil {
				return cidrs, found, err
			}
		}
	}
	return nil, false, nil
}

func nodePodCIDRs(node *corev1.Node) ([]netip.Prefix, bool, error) {
	specCIDRs := node.Spec.PodCIDRs
	if len(specCIDRs) == 0 && node.Spec.PodCIDR != "" {
		specCIDRs = []string{node.Spec.PodCIDR}
	}
	if len(specCIDRs) == 0 {
		return nil, false, nil
	}
	cidrs, err := parsePrefixes(specCIDRs)
	return cidrs, true, err
}

func logCIDRs(log *zap.Logger, nodeName string, cidrs []netip.Prefix, err error) ([]netip.Prefix, error) {
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", nodeName, err)
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
