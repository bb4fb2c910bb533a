package realnode

import (
	"fmt"
	"os"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/nodenet/nodenet/e2e/lab"
)

// PauseImage is the sandbox image every node pins; the e2e suite expects this name.
const PauseImage = "registry.k8s.io/pause:3.10.2"

// containerdConfig is the node's containerd configuration. Every path is the standard one: the
// node's mount namespace puts per-node directories under those paths (see mounts.go).
func containerdConfig(runcPath string) string {
	return fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %[1]q

[plugins."io.containerd.cri.v1.runtime"]
  # This machine's bounding set has no CAP_SYS_RESOURCE: sandboxes may not lower oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %[2]q
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
`, PauseImage, runcPath)
}

// kubeletConfig is the node's KubeletConfiguration: what a kubeadm node would have, with
// nodenet's node-local DNS as clusterDNS, and this machine's quirks (cgroup v1, cgroupfs under a
// cgroup root of the node's own) set.
func kubeletConfig(n *Node) ([]byte, error) {
	cfg := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"address":                  n.Address,
		"port":                     10250,
		"readOnlyPort":             0,
		"healthzBindAddress":       "127.0.0.1",
		"healthzPort":              10248,
		"tlsCertFile":              "/etc/kubernetes/pki/kubelet.crt",
		"tlsPrivateKeyFile":        "/etc/kubernetes/pki/kubelet.key",
		"containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": false},
			"x509":      map[string]any{"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
		},
		// Only the API server holds a client certificate of the cluster CA.
		"authorization": map[string]any{"mode": "AlwaysAllow"},
		"clusterDomain": "cluster.local",
		"clusterDNS":    []string{lab.NodeLocalDNS},
		"resolvConf":    "/etc/resolv.conf",
		"cgroupDriver":  "cgroupfs",
		"cgroupRoot":    "/" + n.CgroupRoot,
		"failCgroupV1":  false,
		"failSwapOn":    false,
		// The machine's disk is shared with everything else on it: never evict or collect images
		// for lack of space, the images cannot be pulled again.
		"evictionHard":                map[string]string{"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"serializeImagePulls":         false,
		"maxPods":                     110,
		"shutdownGracePeriod":         "0s",
		"containerLogMaxSize":         "10Mi",
	}
	return yaml.Marshal(cfg)
}

// resolvConf is the node's /etc/resolv.conf: the lab's upstream DNS on the outside host, where
// nodenet forwards names outside the cluster.
func resolvConf(upstream string) string {
	return "nameserver " + upstream + "\n"
}

// writeFiles writes path → content with the given mode.
func writeFiles(files map[string]string, mode os.FileMode) error {
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			return err
		}
	}
	return nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
