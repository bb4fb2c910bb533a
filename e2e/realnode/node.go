package realnode

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodenet/nodenet/e2e/lab"
)

// Node is a real Kubernetes node: a network namespace on the lab's underlay and a mount
// namespace of its own (held by a sleeping holder process), in which containerd, runc and kubelet
// run as on a machine of their own.
type Node struct {
	Name    string
	Address string
	NS      *lab.Netns
	// Dir holds the node's own copies of the standard paths (see nodeDirs), its configuration
	// and its logs.
	Dir string
	// CgroupRoot is kubelet's cgroupRoot, a directory of that name in every hierarchy.
	CgroupRoot string

	cluster     *Cluster
	holder      *lab.Process
	mountNS     string // the holder's /proc/PID/ns/mnt link
	containerd  *lab.Process
	kubelet     *lab.Process
	createdDirs []string
	cgroupDirs  []string
}

// ContainerdSocket is containerd's socket as the host sees it.
func (n *Node) ContainerdSocket() string { return n.hostPath("/run/containerd/containerd.sock") }

// startNode brings up node number index (underlay address 198.18.0.(10+index)) up to a
// registered, not yet ready Node: no CNI configuration exists until nodenet's DaemonSet writes it.
func (c *Cluster) startNode(ctx context.Context, index int, hs []hierarchy) (*Node, error) {
	name := fmt.Sprintf("node%d", index)
	ns, err := c.Lab.AddNetns(name)
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name, Address: fmt.Sprintf("198.18.0.%d", 10+index), NS: ns,
		Dir: filepath.Join(c.Lab.Dir, name), CgroupRoot: "nodenet-" + ns.Name, cluster: c}
	if err := c.Lab.Attach(ns, "eth0", n.Address+"/24", "p-"+name); err != nil {
		return nil, err
	}
	if _, err := ns.Run("ip", "route", "add", "default", "via", lab.OutsideAddr); err != nil {
		return nil, err
	}
	// Registered before anything can be left behind, so it runs once the rest has stopped.
	c.Lab.OnClose(n.removeLeftovers)
	if err := n.prepareMountSources(lab.UpstreamDNS); err != nil {
		return nil, err
	}
	if err := n.createCgroupRoots(hs); err != nil {
		return nil, err
	}
	if err := n.writeKubeletFiles(); err != nil {
		return nil, err
	}
	if err := n.startHolder(ctx, hs); err != nil {
		return nil, err
	}
	// Runs before the holder stops and after kubelet and containerd, registered later, have.
	c.Lab.OnClose(n.endProcesses)
	if err := n.startContainerd(ctx); err != nil {
		return nil, err
	}
	if err := n.importImages(ctx); err != nil {
		return nil, err
	}
	if err := n.startKubelet(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// writeKubeletFiles writes kubelet's identity (a client certificate for system:node:NAME), its
// serving certificate, its kubeconfig and its configuration under the node's /etc/kubernetes.
func (n *Node) writeKubeletFiles() error {
	cp := n.cluster.CP
	pki := n.hostPath("/etc/kubernetes/pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	clientCrt, clientKey, err := cp.IssueClientCert("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"})
	if err != nil {
		return err
	}
	servingCrt, servingKey, err := cp.IssueServingCert("kubelet-serving-"+n.Name, n.Name, []net.IP{net.ParseIP(n.Address)}, []string{n.Name})
	if err != nil {
		return err
	}
	for src, dst := range map[string]string{
		clientCrt: "kubelet-client.crt", clientKey: "kubelet-client.key",
		servingCrt: "kubelet.crt", servingKey: "kubelet.key", cp.CAPath: "ca.crt",
	} {
		if err := copyFile(src, filepath.Join(pki, dst)); err != nil {
			return err
		}
	}
	// kubeadm's file name: nodenet finds the API server's address there before the kubernetes
	// Service is programmed.
	if err := cp.WriteKubeconfigFor(n.hostPath("/etc/kubernetes/kubelet.conf"),
		"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/kubelet-client.crt", "/etc/kubernetes/pki/kubelet-client.key"); err != nil {
		return err
	}
	cfg, err := kubeletConfig(n)
	if err != nil {
		return err
	}
	return writeFiles(map[string]string{
		n.hostPath("/etc/kubernetes/kubelet-config.yaml"): string(cfg),
		filepath.Join(n.Dir, "containerd.toml"):           containerdConfig(filepath.Join(n.cluster.opts.NodeBinDir, "runc")),
	}, 0o600)
}

func (n *Node) startHolder(ctx context.Context, hs []hierarchy) error {
	p, err := n.cluster.Lab.StartProcess("holder-"+n.Name, filepath.Join(n.Dir, "holder.log"),
		"ip", "netns", "exec", n.NS.Name, "sh", "-c", n.holderScript(hs))
	if err != nil {
		return err
	}
	n.holder = p
	if err := waitFor(ctx, time.Minute, p, func(context.Context) error {
		_, err := os.Stat(n.holderReady())
		return err
	}); err != nil {
		return err
	}
	// Only now: until ip netns exec has unshared, the holder's PID is in the host's mount
	// namespace, and ending "every process of that namespace" would end the host's.
	if n.mountNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.PID())); err != nil {
		return err
	}
	own, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if n.mountNS == own {
		n.mountNS = ""
		return fmt.Errorf("node %s: the holder (pid %d) shares this process's mount namespace", n.Name, p.PID())
	}
	return nil
}

// enter returns argv run inside the node's mount and network namespaces, with the node's
// binaries first on PATH (containerd finds its shim and runc there).
func (n *Node) enter(argv ...string) []string {
	path := n.cluster.opts.NodeBinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	return append([]string{"nsenter", "-t", strconv.Itoa(n.holder.PID()), "-m", "-n", "--", "env", "PATH=" + path}, argv...)
}

func (n *Node) startContainerd(ctx context.Context) error {
	p, err := n.cluster.Lab.StartProcess("containerd-"+n.Name, filepath.Join(n.Dir, "containerd.log"),
		n.enter(filepath.Join(n.cluster.opts.NodeBinDir, "containerd"), "--config", filepath.Join(n.Dir, "containerd.toml"))...)
	if err != nil {
		return err
	}
	n.containerd = p
	return waitFor(ctx, time.Minute, p, func(ctx context.Context) error {
		_, err := n.ctr(ctx, "version")
		return err
	})
}

// ctr runs containerd's client against the node's containerd, in the k8s.io namespace of the CRI.
func (n *Node) ctr(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"--address", n.ContainerdSocket(), "--namespace", "k8s.io"}, args...)
	out, err := exec.CommandContext(ctx, filepath.Join(n.cluster.opts.NodeBinDir, "ctr"), argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s on %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// importImages loads the test images, nodenet's among them, as if they had been pulled.
func (n *Node) importImages(ctx context.Context) error {
	_, err := n.ctr(ctx, "images", "import", "--platform", "linux/amd64", n.cluster.opts.Images)
	return err
}

func (n *Node) startKubelet(ctx context.Context) error {
	p, err := n.cluster.Lab.StartProcess("kubelet-"+n.Name, filepath.Join(n.Dir, "kubelet.log"),
		n.enter(filepath.Join(n.cluster.opts.NodeBinDir, "kubelet"),
			"--config=/etc/kubernetes/kubelet-config.yaml", "--kubeconfig=/etc/kubernetes/kubelet.conf",
			"--hostname-override="+n.Name, "--node-ip="+n.Address, "--v=2")...)
	if err != nil {
		return err
	}
	n.kubelet = p
	return waitFor(ctx, 2*time.Minute, p, func(ctx context.Context) error {
		_, err := n.cluster.CP.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("node %s not registered yet", n.Name)
		}
		return err
	})
}

// endProcesses ends every process of the node but the holder — the shims and every container,
// kubelet and containerd if still there — found by its mount namespace or its cgroups. The
// holder, stopped next, takes the node's mounts with it.
func (n *Node) endProcesses() error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := n.cgroupPIDs()
		if n.mountNS != "" {
			pids = append(pids, pidsInMountNamespace(n.mountNS, n.holder.PID())...)
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: processes %v still running after 30s", n.Name, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL) // gone already is fine
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeLeftovers removes the node's cgroups and the mount points it created on the host.
func (n *Node) removeLeftovers() error {
	err := n.removeCgroupRoots()
	for i := len(n.createdDirs) - 1; i >= 0; i-- {
		// Only if empty: a mount point that something else filled since stays.
		_ = os.Remove(n.createdDirs[i])
	}
	return err
}

// pidsInMountNamespace lists the processes in the mount namespace mntns (a /proc/PID/ns/mnt
// link), but except.
func pidsInMountNamespace(mntns string, except int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == except {
			continue
		}
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && link == mntns {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitFor polls check until it succeeds, p exits, or the timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, p *lab.Process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if p.Exited() {
			return fmt.Errorf("%s exited; log %s:\n%s", p.Name, p.Log, lab.Tail(p.Log, 30))
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %v; log tail:\n%s", p.Name, timeout, last, lab.Tail(p.Log, 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o600)
}

// Tag gives an image of the node's containerd a second name.
func (n *Node) Tag(ctx context.Context, ref, newRef string) error {
	_, err := n.ctr(ctx, "images", "tag", "--force", ref, newRef)
	return err
}
