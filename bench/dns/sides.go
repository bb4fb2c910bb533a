package main

import (
	"context"
	"fmt"
	"net/netip"
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

	"github.com/nodenet/nodenet/bench/internal/harness"
	"github.com/nodenet/nodenet/e2e/lab"
)

// nodeLocalAddr is the address NodeLocal DNSCache and nodenet serve on each node; kubelets write
// it into pods' resolv.conf.
const nodeLocalAddr = "169.254.20.10"

const (
	sideNodenet = "nodenet"
	sideCoreDNS = "coredns"
)

// side is one DNS server under test: the node it runs on, its process, and the pod-like client
// namespace the load comes from.
type side struct {
	name   string
	node   *lab.Node
	proc   harness.Proc
	client *lab.Netns
	// logPath is the server's log, inside the lab directory that Close removes.
	logPath string
	// unavailable says why the side could not be measured; its cells are left empty.
	unavailable string
}

// corefile is NodeLocal DNSCache's configuration with the kubernetes plugin in place of its
// forwarding of the cluster domain to the cluster's CoreDNS, so that one process answers what
// nodenet answers: the cluster domain from the API server's state, everything else from a cache in
// front of the upstream. Query logging is off (the log plugin is absent), as in both projects'
// defaults; health, ready and prometheus are on, as NodeLocal DNSCache runs them.
const corefile = `.:53 {
    bind %[1]s
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes %[2]s in-addr.arpa ip6.arpa {
        kubeconfig %[3]s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    prometheus 127.0.0.1:9253
    cache 30
    forward . %[4]s
}
`

// newCoreDNSSide joins a node for CoreDNS, gives CoreDNS its identity and configuration, and puts
// the node-local address on the node namespace's loopback (NodeLocal DNSCache puts it on a dummy
// interface, which this kernel lacks; the address behaves the same on lo). The node's nodenet
// daemon is never started.
func newCoreDNSSide(ctx context.Context, cp *lab.ControlPlane, l *lab.Lab, bin string, index int) (*side, error) {
	node, err := cp.JoinNode(ctx, lab.NodeOptions{Name: "cd", Index: index})
	if err != nil {
		return nil, err
	}
	if _, err := node.NS.Run("ip", "addr", "add", nodeLocalAddr+"/32", "dev", "lo"); err != nil {
		return nil, err
	}
	kubeconfig, err := coreDNSKubeconfig(ctx, cp, node.Dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(node.Dir, "Corefile")
	if err := os.WriteFile(path, fmt.Appendf(nil, corefile, nodeLocalAddr, clusterDomain, kubeconfig, upstreamAddr), 0o644); err != nil {
		return nil, err
	}
	client, err := newNodeClient(l, node)
	if err != nil {
		return nil, err
	}
	log := filepath.Join(node.Dir, "coredns.log")
	return &side{name: sideCoreDNS, node: node, client: client, logPath: log,
		proc: &harness.NetnsProc{Name: "coredns", Lab: l, NS: node.NS, Argv: []string{bin, "-conf", path}, Log: log}}, nil
}

// coreDNSKubeconfig gives CoreDNS the identity a cluster gives it: a service account bound to the
// permissions of the system:coredns role of kubeadm.
func coreDNSKubeconfig(ctx context.Context, cp *lab.ControlPlane, dir string) (string, error) {
	const ns, name = "kube-system", "coredns"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create service account %s/%s: %w", ns, name, err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "bench:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	if _, err := cp.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create cluster role %s: %w", role.Name, err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bench:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
	}
	if _, err := cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("bind coredns to %s: %w", role.Name, err)
	}
	tr, err := cp.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for coredns: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: cp.Server, CertificateAuthority: cp.CAPath}
	cfg.AuthInfos["coredns"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "coredns"}
	cfg.CurrentContext = "lab"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "coredns.kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}

// newNodenetSide joins a node whose daemon serves DNS on the node-local address and forwards to
// the benchmark's upstream; the rest of its configuration is the lab's, at the info log level.
// Its Service proxy runs only with withProxy, so that by default the process measured does what
// CoreDNS does and no more.
func newNodenetSide(ctx context.Context, cp *lab.ControlPlane, l *lab.Lab, index int, withProxy bool) (*side, error) {
	node, err := cp.JoinNode(ctx, lab.NodeOptions{Name: "nn", Index: index, Config: map[string]any{
		"clusterDomain": clusterDomain,
		"dns": map[string]any{"enabled": true, "listen": []string{nodeLocalAddr},
			"upstreams": []string{upstreamAddr.String()}},
		"proxy":   map[string]any{"enabled": withProxy},
		"logging": map[string]any{"level": "info", "format": "json"},
	}})
	if err != nil {
		return nil, err
	}
	client, err := newNodeClient(l, node)
	if err != nil {
		return nil, err
	}
	return &side{name: sideNodenet, node: node, client: client, proc: harness.NodenetDaemon{Node: node}, logPath: node.LogPath}, nil
}

// newNodeClient makes the namespace the load comes from: a pod on the node, with the address
// at the top of the node's pod range, which IPAM hands out last.
func newNodeClient(l *lab.Lab, node *lab.Node) (*lab.Netns, error) {
	if len(node.PodCIDRs) == 0 {
		return nil, fmt.Errorf("node %s has no pod range", node.Name)
	}
	addr, err := topOfRange(node.PodCIDRs[0])
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node.Name, err)
	}
	return newClient(l, node.NS, node.Name, addr)
}

// clientGateway is the next hop of the pod-like clients, an address the server side of their
// veth holds from the start. Without it a client resolves the node-local address itself by ARP,
// and a first request sent before nodenet has put that address in place fails and is retried only
// after a second: the start of nodenet measured 1.0 s against CoreDNS's 0.2 s (whose address the
// benchmark puts in place before it starts). A pod on a node resolves its gateway, not the
// node-local address, so this is also how pods reach it.
const clientGateway = "169.254.1.1"

// newClient wires a pod-like namespace to the server's namespace as a CNI plugin that routes pods
// with /32s would: a /32 route to the client on the server side, and a default route via a
// link-local gateway the server side of the veth holds.
//
//	client addr/32 ── eth0 ═ dns<name> (169.254.1.1) ── [server namespace: 169.254.20.10 on lo]
func newClient(l *lab.Lab, server *lab.Netns, name string, addr netip.Addr) (*lab.Netns, error) {
	client, err := l.AddNetns(name + "c")
	if err != nil {
		return nil, err
	}
	serverIf := "dns" + name
	for _, s := range [][]string{
		{"ip", "link", "add", serverIf, "type", "veth", "peer", "name", "eth0", "netns", client.Name},
		{"ip", "addr", "add", clientGateway + "/32", "dev", serverIf},
		{"ip", "link", "set", serverIf, "up"},
		{"ip", "route", "add", addr.String() + "/32", "dev", serverIf},
	} {
		if _, err := server.Run(s...); err != nil {
			return nil, err
		}
	}
	for _, s := range [][]string{
		{"ip", "addr", "add", addr.String() + "/32", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", clientGateway, "dev", "eth0", "onlink"},
	} {
		if _, err := client.Run(s...); err != nil {
			return nil, err
		}
	}
	return client, nil
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
	path := filepath.Join(dir, fmt.Sprintf("bench-dns-%s-%d.log", s.name, os.Getpid()))
	return path, os.WriteFile(path, data, 0o644)
}
