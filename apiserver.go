package main

import (
	"errors"
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodenet/nodenet/config"
)

// inClusterServer decides where the in-cluster client connects, and names why. Without
// kube-proxy, the kubernetes Service's ClusterIP (KUBERNETES_SERVICE_HOST) is programmed by
// nodenet itself, so a node's first daemon cannot reach the API server through it: it takes the
// configured URL, else the server of the node kubelet's kubeconfig. The ClusterIP is the last
// resort, which works once a previous daemon's rules are in place.
func inClusterServer(cfg config.APIServer) (server, source string, err error) {
	if cfg.URL != "" {
		return cfg.URL, "apiServer.url", nil
	}
	var errs []error
	for _, path := range cfg.KubeletKubeconfigs {
		server, err := kubeconfigServer(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return server, path, nil
	}
	if err := errors.Join(errs...); err != nil {
		return "", "", fmt.Errorf("apiServer.kubeletKubeconfigs: %w (set apiServer.url instead)", err)
	}
	return "", "the kubernetes Service (KUBERNETES_SERVICE_HOST)", nil
}

// kubeconfigServer reads the server address of a kubeconfig's current context, or of its only
// cluster when no context is current.
func kubeconfigServer(path string) (string, error) {
	if _, err := os.Stat(path); err != nil {
		return "", err
	}
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if ctx, ok := kc.Contexts[kc.CurrentContext]; ok {
		if c, ok := kc.Clusters[ctx.Cluster]; ok && c.Server != "" {
			return c.Server, nil
		}
	}
	if len(kc.Clusters) == 1 {
		for _, c := range kc.Clusters {
			if c.Server != "" {
				return c.Server, nil
			}
		}
	}
	return "", fmt.Errorf("%s: names no server for its current context %q", path, kc.CurrentContext)
}
