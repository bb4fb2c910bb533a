package realnode_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodenet/nodenet/e2e/lab"
	"github.com/nodenet/nodenet/e2e/realnode"
	"github.com/nodenet/nodenet/e2e/realnode/images"
)

// cluster is the real-node cluster every test of the package shares: starting one takes a
// minute or two, most of it the nodes' first image imports.
var cluster *realnode.Cluster

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	ci := os.Getenv("CI") != ""
	skip := func(why string) int {
		if ci {
			fmt.Fprintln(os.Stderr, "realnode: cannot run in CI:", why)
			return 1
		}
		fmt.Fprintln(os.Stderr, "realnode: skipped:", why)
		return 0
	}
	if os.Geteuid() != 0 {
		return skip("not root (network and mount namespaces, cgroups)")
	}
	env := map[string]string{}
	for _, k := range []string{"NODENET_BIN_DIR", "NODENET_CLUSTER_BIN_DIR", "NODENET_NODE_BIN_DIR"} {
		if env[k] = os.Getenv(k); env[k] == "" {
			return skip(k + " is not set (make test sets it)")
		}
	}
	prefix := fmt.Sprintf("rn%d", os.Getpid()%10000)
	before, err := hostState(prefix, env["NODENET_NODE_BIN_DIR"])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := runCluster(m, prefix, env)
	after, err := hostState(prefix, env["NODENET_NODE_BIN_DIR"])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if before != after {
		fmt.Fprintf(os.Stderr, "realnode: the cluster left the host changed:\n--- before\n%s\n--- after\n%s\n", before, after)
		return 1
	}
	return code
}

// hostState is what the cluster must leave as it found it: the host's own network namespace,
// its mounts, the cgroups and the standard paths of a node, which the nodes bind per node, and
// no process running a node's binaries (kubelet, containerd, its shims, runc).
func hostState(prefix, nodeBinDir string) (string, error) {
	state, err := lab.HostNetworkState(prefix)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(state)
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		// id parent major:minor root mountpoint ...: the mount points, not the IDs that change
		// Other suites running meanwhile add and remove namespaces of their own under /run/netns.
		if f := strings.Fields(line); len(f) > 4 && (!strings.HasPrefix(f[4], "/run/netns/") || strings.HasPrefix(f[4], "/run/netns/"+prefix)) {
			fmt.Fprintf(&b, "mount %s\n", f[4])
		}
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/nodenet-" + prefix + "-*")
	for _, c := range cgroups {
		fmt.Fprintf(&b, "cgroup %s\n", c)
	}
	for _, d := range []string{"/etc/cni", "/opt/cni", "/etc/kubernetes", "/var/lib/kubelet", "/var/lib/containerd",
		"/run/containerd", "/var/lib/nodenet", "/run/nodenet"} {
		if _, err := os.Stat(d); err == nil {
			fmt.Fprintf(&b, "path %s\n", d)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && strings.HasPrefix(exe, nodeBinDir+"/") {
			fmt.Fprintf(&b, "process %s (%s)\n", filepath.Dir(p), exe)
		}
	}
	return b.String(), nil
}

func runCluster(m *testing.M, prefix string, env map[string]string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	archive, _, err := images.Build(ctx, images.Options{
		NodenetBinDir: env["NODENET_BIN_DIR"],
		AgnhostPath:   filepath.Join(env["NODENET_NODE_BIN_DIR"], "agnhost"),
		CacheDir:      filepath.Join(cacheDir(), "images"),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "realnode: images:", err)
		return 1
	}
	c, err := realnode.Start(ctx, realnode.Options{
		ClusterBinDir: env["NODENET_CLUSTER_BIN_DIR"],
		NodeBinDir:    env["NODENET_NODE_BIN_DIR"],
		Images:        archive,
		Prefix:        prefix,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "realnode: start cluster:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "realnode: cluster of %d nodes up in %v\n", len(c.Nodes), time.Since(start).Round(time.Second))
	cluster = c
	code := m.Run()
	if err := c.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "realnode: cluster teardown:", err)
		return 1
	}
	return code
}

// cacheDir is where heavy builds are kept between runs, as the Makefile's NODENET_CACHE.
func cacheDir() string {
	if d := os.Getenv("NODENET_CACHE"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "nodenet")
}
