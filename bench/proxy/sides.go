package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/nodenet/nodenet/bench/internal/harness"
	"github.com/nodenet/nodenet/e2e/lab"
)

// side is one Service proxy under test: the node it runs on, where its rules are, and the client
// and backend namespaces wired to that node for connect latency.
type side struct {
	name  string
	node  *lab.Node
	proc  harness.Proc
	rules ruleset
	topo  *topology
	// metricsAddr serves Prometheus metrics inside the node namespace; programmingMetric is
	// the proxy's own histogram of network programming latency (from the EndpointSlice
	// trigger-time annotation to rules written).
	metricsAddr       string
	programmingMetric string
	// logPath is the proxy's log, inside the lab directory that Close removes.
	logPath string
	// kubeconfig is the proxy's identity, which the list floor borrows.
	kubeconfig string
	// profileName names the current round's profiles (nodenet only, with --profiles).
	profileName string
	// peakRSS is the highest resident set seen in the current round (sampleRSS).
	peakRSS int64
	// unavailable says why the side could not be measured; its cells are left empty.
	unavailable string
}

const (
	sideNodenet   = "nodenet"
	sideKubeProxy = "kube-proxy"
)

// newKubeProxySide joins a node for kube-proxy and writes its identity and configuration. The
// node's nodenet daemon is never started.
func newKubeProxySide(ctx context.Context, cp *lab.ControlPlane, l *lab.Lab, binDir string, index int) (*side, error) {
	node, err := cp.JoinNode(ctx, lab.NodeOptions{Name: "kp", Index: index})
	if err != nil {
		return nil, err
	}
	kubeconfig, err := kubeProxyKubeconfig(ctx, cp, node.Dir)
	if err != nil {
		return nil, err
	}
	cfg := kubeProxyConfig(kubeconfig, node)
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	config := filepath.Join(node.Dir, "kube-proxy.yaml")
	if err := os.WriteFile(config, data, 0o644); err != nil {
		return nil, err
	}
	topo, err := newTopology(l, node)
	if err != nil {
		return nil, err
	}
	log := filepath.Join(node.Dir, "kube-proxy.log")
	return &side{
		name: sideKubeProxy, node: node, rules: kubeProxyRules, topo: topo, logPath: log, kubeconfig: kubeconfig,
		proc:        &harness.NetnsProc{Name: "kube-proxy", Lab: l, NS: node.NS, Argv: []string{filepath.Join(binDir, "kube-proxy"), "--config", config}, Log: log},
		metricsAddr: "127.0.0.1:10249", programmingMetric: "kubeproxy_network_programming_duration_seconds",
	}, nil
}

// kubeProxyConfig is kube-proxy's configuration: nftables mode with its default sync periods,
// servers bound inside the node namespace, and every conntrack setting at "leave as is", because
// some of them are not per namespace (nf_conntrack_max, the hash size) and the benchmark must not
// change the host.
func kubeProxyConfig(kubeconfig string, node *lab.Node) map[string]any {
	return map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"mode":               "nftables",
		"clientConnection":   map[string]any{"kubeconfig": kubeconfig},
		"hostnameOverride":   node.Name,
		"bindAddress":        node.Address,
		"clusterCIDR":        lab.ClusterCIDR,
		"detectLocalMode":    "ClusterCIDR",
		"metricsBindAddress": "127.0.0.1:10249",
		"healthzBindAddress": "127.0.0.1:10256",
		// Its own process only; -999 (the default) would make it the last thing the OOM killer
		// picks on a shared machine.
		"oomScoreAdj": 0,
		"conntrack": map[string]any{
			"maxPerCore": 0, "min": 0,
			"tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
			"udpTimeout": "0s", "udpStreamTimeout": "0s", "tcpBeLiberal": false,
		},
		"nftables": map[string]any{"minSyncPeriod": "1s", "syncPeriod": "30s", "masqueradeBit": 14},
		"logging":  map[string]any{"format": "text", "verbosity": 0},
	}
}

// kubeProxyKubeconfig gives kube-proxy the identity kubeadm gives it: a service account bound
// to the system:node-proxier role.
func kubeProxyKubeconfig(ctx context.Context, cp *lab.ControlPlane, dir string) (string, error) {
	const ns, name = "kube-system", "kube-proxy"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create service account %s/%s: %w", ns, name, err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bench:kube-proxy"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-proxier"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
	}
	if _, err := cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("bind kube-proxy to system:node-proxier: %w", err)
	}
	tr, err := cp.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for kube-proxy: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: cp.Server, CertificateAuthority: cp.CAPath}
	cfg.AuthInfos["kube-proxy"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "kube-proxy"}
	cfg.CurrentContext = "lab"
	path := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return path, clientcmd.WriteToFile(*cfg, path)
}

// newNodenetSide joins a node whose daemon runs the Service proxy (the rest of its
// configuration is the lab's), at the info log level, its default.
func newNodenetSide(ctx context.Context, cp *lab.ControlPlane, l *lab.Lab, index int, memoryLimit string) (*side, error) {
	node, err := cp.JoinNode(ctx, lab.NodeOptions{Name: "nn", Index: index, Config: map[string]any{
		"proxy":   map[string]any{"enabled": true},
		"logging": map[string]any{"level": "info", "format": "json"},
	}})
	if err != nil {
		return nil, err
	}
	topo, err := newTopology(l, node)
	if err != nil {
		return nil, err
	}
	return &side{
		name: sideNodenet, node: node, rules: nodenetRules, topo: topo, proc: harness.NodenetDaemon{Node: node, MemoryLimit: memoryLimit}, logPath: node.LogPath,
		kubeconfig:  node.Kubeconfig,
		metricsAddr: "127.0.0.1:9310", programmingMetric: "nodenet_proxy_network_programming_duration_seconds",
	}, nil
}

// keepLog copies the side's log into dir (created if needed) and returns the copy's path.
func (s *side) keepLog(dir string) (string, error) {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%d.log", s.name, os.Getpid()))
	return path, os.WriteFile(path, data, 0o644)
}
