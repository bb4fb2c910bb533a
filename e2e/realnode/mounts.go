package realnode

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// nodeDirs are the host paths a node keeps apart from the host and from the other nodes: its
// mount namespace puts a directory of its own over each, so containerd, kubelet and nodenet's
// DaemonSet use the standard paths (and deploy/ its standard hostPaths) unchanged.
var nodeDirs = []string{
	"/etc/cni/net.d", "/opt/cni/bin", "/etc/kubernetes",
	"/var/lib/kubelet", "/var/lib/containerd", "/run/containerd",
	"/var/lib/nodenet", "/run/nodenet", "/run/netns", "/var/log",
}

// nodeSysctls are the /proc/sys files kubelet checks and would set on the host. The node's mount
// namespace shows files holding the values kubelet wants, so nothing of the host changes.
var nodeSysctls = map[string]string{
	"/proc/sys/vm/overcommit_memory": "1",
	"/proc/sys/kernel/panic":         "10",
	"/proc/sys/kernel/panic_on_oops": "1",
}

// hierarchy is one cgroup v1 (or the v2 "unified") hierarchy mounted on the host.
type hierarchy struct {
	mountPoint string // e.g. /sys/fs/cgroup/cpu
	fsType     string // cgroup or cgroup2
	options    string // the hierarchy's mount options: its controllers or name=
}

// hostHierarchies lists the host's cgroup hierarchies from /proc/self/mountinfo.
func hostHierarchies() ([]hierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var hs []hierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 3 || (rf[0] != "cgroup" && rf[0] != "cgroup2") {
			continue
		}
		var opts []string
		for _, o := range strings.Split(rf[2], ",") {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		hs = append(hs, hierarchy{mountPoint: lf[4], fsType: rf[0], options: strings.Join(opts, ",")})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(hs, func(h hierarchy) bool { return h.fsType == "cgroup" }) {
		return nil, errors.New("no cgroup v1 hierarchy on this host; the real-node harness is written for cgroup v1 (see REAL-NODES.md)")
	}
	return hs, nil
}

// holderScript prepares the node's mount namespace, which `ip netns exec` has just made (a slave
// of the host's, with /sys remounted for the node's network namespace), then keeps it alive.
// containerd and kubelet enter it with nsenter.
func (n *Node) holderScript(hs []hierarchy) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("set -eu")
	// The fresh /sys hides the host's cgroup mounts: mount the same hierarchies again.
	w("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup")
	for _, h := range hs {
		w("mkdir -p %s", shellQuote(h.mountPoint))
		if h.fsType == "cgroup2" {
			w("mount -t cgroup2 cgroup2 %s", shellQuote(h.mountPoint))
			continue
		}
		opts := h.options
		if strings.HasPrefix(opts, "name=") {
			opts = "none," + opts
		}
		w("mount -t cgroup -o %s cgroup %s", shellQuote(opts), shellQuote(h.mountPoint))
	}
	for _, d := range nodeDirs {
		w("mount --bind %s %s", shellQuote(n.hostPath(d)), shellQuote(d))
	}
	w("mount --bind %s /etc/resolv.conf", shellQuote(n.hostPath("/etc/resolv.conf")))
	for _, path := range sortedKeys(nodeSysctls) {
		w("mount --bind %s %s", shellQuote(n.sysctlFile(path)), shellQuote(path))
	}
	// As on a systemd host: mounts made inside (pod volumes, network namespaces) reach the
	// containers that ask for them (mountPropagation), and never the host, whose slave this is.
	w("mount --make-rshared /")
	w("touch %s", shellQuote(n.holderReady()))
	w("exec sleep infinity")
	return b.String()
}

// hostPath is where the node's own copy of a standard path lives on the host.
func (n *Node) hostPath(path string) string { return filepath.Join(n.Dir, "fs", path) }

func (n *Node) sysctlFile(path string) string {
	return filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(strings.TrimPrefix(path, "/proc/sys/"), "/", "."))
}

func (n *Node) holderReady() string { return filepath.Join(n.Dir, "holder-ready") }

// prepareMountSources creates the node's directories and files, and the mount points that do not
// exist on the host yet, which it records so teardown removes them again.
func (n *Node) prepareMountSources(upstreamDNS string) error {
	for _, d := range nodeDirs {
		if err := os.MkdirAll(n.hostPath(d), 0o755); err != nil {
			return err
		}
		created, err := mkdirAllRecorded(d)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", d, err)
		}
		n.createdDirs = append(n.createdDirs, created...)
	}
	if err := os.WriteFile(filepath.Join(n.Dir, createdDirsFile), []byte(strings.Join(n.createdDirs, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(n.Dir, "sysctl"), 0o755); err != nil {
		return err
	}
	files := map[string]string{n.hostPath("/etc/resolv.conf"): resolvConf(upstreamDNS)}
	for path, value := range nodeSysctls {
		files[n.sysctlFile(path)] = value + "\n"
	}
	return writeFiles(files, 0o644)
}

// mkdirAllRecorded is os.MkdirAll that returns the directories it created, deepest last.
func mkdirAllRecorded(path string) ([]string, error) {
	var missing []string
	for p := path; p != "/"; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, p)
	}
	slices.Reverse(missing)
	for _, p := range missing {
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
	}
	return missing, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
