package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// DaemonServiceAccount is the identity deploy/rbac.yaml gives the nodenet daemons.
const (
	DaemonNamespace      = "kube-system"
	DaemonServiceAccount = "nodenet"
)

// JoinNode adds a node to the cluster as a kubelet and the DaemonSet would: it registers the Node
// (InternalIP = its underlay address), creates the daemon's pod object bound to that node, and
// gives the daemon a token of the nodenet service account bound to that pod, so the daemon runs
// with exactly the permissions of deploy/ (apply it first with ApplyDeploy). The daemon is not
// started; the node's pod range is the one kube-controller-manager assigns.
func (cp *ControlPlane) JoinNode(ctx context.Context, opts NodeOptions) (*Node, error) {
	addr := fmt.Sprintf("198.18.0.%d", 10+opts.Index)
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: opts.Name, Labels: map[string]string{
			"kubernetes.io/hostname": opts.Name, "kubernetes.io/os": "linux"}},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}, {Type: corev1.NodeHostName, Address: opts.Name}},
		},
	}
	if _, err := cp.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("register node %s: %w", opts.Name, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nodenet-" + opts.Name, Namespace: DaemonNamespace,
			Labels: map[string]string{"app.kubernetes.io/name": "nodenet"}},
		Spec: corev1.PodSpec{
			NodeName:           opts.Name,
			ServiceAccountName: DaemonServiceAccount,
			HostNetwork:        true,
			Containers:         []corev1.Container{{Name: "nodenet", Image: "nodenet/nodenet:dev"}},
		},
	}
	if _, err := cp.Client.CoreV1().Pods(DaemonNamespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create daemon pod for %s: %w", opts.Name, err)
	}
	pod, err := cp.Client.CoreV1().Pods(DaemonNamespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	tr, err := cp.Client.CoreV1().ServiceAccounts(DaemonNamespace).CreateToken(ctx, DaemonServiceAccount, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](24 * 3600),
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for the daemon on %s (is deploy/rbac.yaml applied?): %w", opts.Name, err)
	}
	kubeconfig := filepath.Join(cp.lab.Dir, opts.Name+".kubeconfig")
	if err := cp.writeKubeconfig(kubeconfig, &clientcmdapi.AuthInfo{Token: tr.Status.Token}); err != nil {
		return nil, err
	}
	opts.Kubeconfig = kubeconfig
	if _, ok := opts.Config["dns"]; !ok {
		if opts.Config == nil {
			opts.Config = map[string]any{}
		}
		opts.Config["dns"] = map[string]any{"enabled": true, "upstreams": []string{UpstreamDNS}}
	}
	n, err := cp.lab.AddNode(opts)
	if err != nil {
		return nil, err
	}
	if err := cp.lab.startDNSKeeper(n); err != nil {
		return nil, err
	}
	cidrs, err := cp.waitPodCIDRs(ctx, opts.Name)
	if err != nil {
		return nil, err
	}
	n.PodCIDRs = cidrs
	return n, nil
}

func (cp *ControlPlane) waitPodCIDRs(ctx context.Context, name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && len(n.Spec.PodCIDRs) > 0 {
			return n.Spec.PodCIDRs, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %s got no podCIDRs from kube-controller-manager: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ApplyDeploy applies the given manifests of deploy/ (server-side validated, as a user would).
func (cp *ControlPlane) ApplyDeploy(files ...string) error {
	args := []string{"apply"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	_, err := cp.Kubectl(args...)
	return err
}

// DeleteNode removes the Node object, as when a node leaves the cluster.
func (cp *ControlPlane) DeleteNode(ctx context.Context, name string) error {
	return cp.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
}

// PublishPod creates the Pod object of a networked pod as the kubelet would: scheduled to node,
// then its status with the addresses CNI gave it and the Ready condition, so the endpointslice
// controller lists it behind matching Services.
func (cp *ControlPlane) PublishPod(ctx context.Context, namespace string, labels map[string]string, node *Node, p *Pod, port int32) error {
	if _, err := cp.Client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); err != nil {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
		if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create namespace %s: %w", namespace, err)
		}
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: namespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node.Name,
			Containers: []corev1.Container{{Name: "app", Image: "nodenet-lab/http:dev",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: port}}}},
		},
	}
	created, err := cp.Client.CoreV1().Pods(namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", namespace, p.Name, err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase:   corev1.PodRunning,
		HostIP:  node.Address,
		HostIPs: []corev1.HostIP{{IP: node.Address}},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		StartTime: &now,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Image: "nodenet-lab/http:dev", Ready: true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	for i, ip := range p.IPs {
		if i == 0 {
			created.Status.PodIP = ip.Addr().String()
		}
		created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: ip.Addr().String()})
	}
	if _, err := cp.Client.CoreV1().Pods(namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set status of pod %s/%s: %w", namespace, p.Name, err)
	}
	return nil
}
