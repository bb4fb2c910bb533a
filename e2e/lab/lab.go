// Package lab builds simulated Kubernetes nodes out of network namespaces on one machine: an
// underlay bridge, node namespaces each running its own `nodenet daemon`, pods created through
// libcni exactly as a container runtime does, and an "outside" host standing for the world beyond
// the cluster. The integration tests, the demo and the benchmarks share it. Everything it creates
// is recorded and removed by Close, also after a failure.
package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// OutsideAddr is the outside host on the underlay, 198.18.0.0/24 (RFC 2544) of DESIGN.md, which
// nodes and the outside host share.
const OutsideAddr = "198.18.0.200"

// Lab owns every namespace, process and directory it creates.
type Lab struct {
	// BinDir holds nodenet and nodenet-cni.
	BinDir string
	// Dir is the lab's scratch directory (node state, CNI cache, logs).
	Dir string

	prefix   string
	mu       sync.Mutex
	cleanups []func() error
	underlay *Netns
}

// New creates an empty lab. prefix keeps its namespace names apart from any other lab's; keep it
// short (interface names are limited to 15 characters).
func New(binDir, prefix string) (*Lab, error) {
	for _, tool := range []string{"ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("lab needs %s (Debian package iproute2): %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "nodenet-lab-"+prefix+"-")
	if err != nil {
		return nil, err
	}
	l := &Lab{BinDir: binDir, Dir: dir, prefix: prefix}
	l.onClose(func() error { return os.RemoveAll(dir) })
	return l, nil
}

// Close undoes everything in reverse order and reports every failure.
func (l *Lab) Close() error {
	l.mu.Lock()
	cleanups := l.cleanups
	l.cleanups = nil
	l.mu.Unlock()
	var errs []error
	for i := len(cleanups) - 1; i >= 0; i-- {
		if err := cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (l *Lab) onClose(f func() error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleanups = append(l.cleanups, f)
}

// Netns is a named network namespace (/run/netns/NAME), or one reached through another path.
type Netns struct {
	Name string
	path string
}

// NetnsAt is the network namespace at path, such as /proc/PID/ns/net of a container's process;
// name only labels it in errors.
func NetnsAt(name, path string) *Netns { return &Netns{Name: name, path: path} }

// Path is the namespace's bind mount, what CNI_NETNS names.
func (n *Netns) Path() string {
	if n.path != "" {
		return n.path
	}
	return filepath.Join("/run/netns", n.Name)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *Netns) Run(args ...string) (string, error) {
	argv := append([]string{"ip", "netns", "exec", n.Name}, args...)
	if n.path != "" {
		argv = append([]string{"nsenter", "--net=" + n.path, "--"}, args...)
	}
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in netns %s: %s: %w: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Delete removes the namespace now.
func (n *Netns) Delete() error {
	if out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// AddNetns creates a namespace with loopback up; Close deletes it.
func (l *Lab) AddNetns(name string) (*Netns, error) {
	full := l.prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", full).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", full, err, strings.TrimSpace(string(out)))
	}
	n := &Netns{Name: full}
	l.onClose(func() error {
		if _, err := os.Stat(n.Path()); errors.Is(err, os.ErrNotExist) {
			return nil // deleted already, by a test standing for a pod that vanished
		}
		return n.Delete()
	})
	if _, err := n.Run("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return n, nil
}

// Underlay returns the namespace holding the bridge that connects nodes and the outside host,
// creating it on first use.
func (l *Lab) Underlay() (*Netns, error) {
	if l.underlay != nil {
		return l.underlay, nil
	}
	ns, err := l.AddNetns("ul")
	if err != nil {
		return nil, err
	}
	if _, err := ns.Run("ip", "link", "add", "ul0", "type", "bridge"); err != nil {
		return nil, err
	}
	if _, err := ns.Run("ip", "link", "set", "ul0", "up"); err != nil {
		return nil, err
	}
	l.underlay = ns
	return ns, nil
}

// Attach connects ns to the underlay bridge with a veth named ifName inside ns carrying addr
// (CIDR notation). The underlay end is named after ns so several hosts can attach.
func (l *Lab) Attach(ns *Netns, ifName, addr, portName string) error {
	ul, err := l.Underlay()
	if err != nil {
		return err
	}
	if _, err := ul.Run("ip", "link", "add", portName, "type", "veth", "peer", "name", ifName, "netns", ns.Name); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "link", "set", portName, "master", "ul0", "up"},
	}
	for _, s := range steps {
		if _, err := ul.Run(s...); err != nil {
			return err
		}
	}
	for _, s := range [][]string{
		{"ip", "addr", "add", addr, "dev", ifName},
		{"ip", "link", "set", ifName, "up"},
	} {
		if _, err := ns.Run(s...); err != nil {
			return err
		}
	}
	return nil
}

// AddOutside creates the host standing for the world outside the cluster, on the underlay at
// OutsideAddr.
func (l *Lab) AddOutside() (*Netns, error) {
	ns, err := l.AddNetns("out")
	if err != nil {
		return nil, err
	}
	if err := l.Attach(ns, "eth0", OutsideAddr+"/24", "out"); err != nil {
		return nil, err
	}
	return ns, nil
}

// OnClose registers f to run when the lab closes, before everything registered earlier.
func (l *Lab) OnClose(f func() error) { l.onClose(f) }
