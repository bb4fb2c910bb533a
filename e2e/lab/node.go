package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"
)

// NodeOptions describe one simulated node.
type NodeOptions struct {
	// Name is the node's name and the suffix of its namespace, e.g. "node1".
	Name string
	// Index numbers the node: underlay address 198.18.0.(10+Index), pod range 10.244.Index.0/24.
	Index int
	// PodCIDRs overrides the pod range(s).
	PodCIDRs []string
	// Kubeconfig connects the daemon to an API server (ControlPlane.JoinNode sets it); the pod
	// ranges then come from the Node object unless PodCIDRs is given. Empty runs the daemon with
	// kubeconfig: none.
	Kubeconfig string
	// Config holds extra configuration keys merged over the lab's defaults.
	Config map[string]any
}

// Node is a namespace standing for a Kubernetes node, with its own nodenet daemon.
type Node struct {
	Name     string
	NS       *Netns
	Address  string
	PodCIDRs []string

	Dir        string
	Kubeconfig string // the daemon's identity; empty with kubeconfig: none
	ConfigPath string
	CNIBinDir  string
	ConfDir    string
	StateDir   string
	RunDir     string
	LogPath    string

	lab  *Lab
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan error
}

// AddNode creates the node's namespace on the underlay (default route via the outside host) and
// writes its configuration; Start runs the daemon.
func (l *Lab) AddNode(opts NodeOptions) (*Node, error) {
	ns, err := l.AddNetns(opts.Name)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("198.18.0.%d", 10+opts.Index)
	if err := l.Attach(ns, "eth0", addr+"/24", "p-"+opts.Name); err != nil {
		return nil, err
	}
	if _, err := ns.Run("ip", "route", "add", "default", "via", OutsideAddr); err != nil {
		return nil, err
	}
	cidrs := opts.PodCIDRs
	if cidrs == nil && opts.Kubeconfig == "" {
		cidrs = []string{fmt.Sprintf("10.244.%d.0/24", opts.Index)}
	}
	dir := filepath.Join(l.Dir, opts.Name)
	n := &Node{
		Name: opts.Name, NS: ns, Address: addr, PodCIDRs: cidrs, Dir: dir, Kubeconfig: opts.Kubeconfig,
		ConfigPath: filepath.Join(dir, "nodenet.yaml"),
		CNIBinDir:  filepath.Join(dir, "cni-bin"),
		ConfDir:    filepath.Join(dir, "cni-conf"),
		StateDir:   filepath.Join(dir, "state"),
		RunDir:     filepath.Join(dir, "run"),
		LogPath:    filepath.Join(dir, "nodenet.log"),
		lab:        l,
	}
	cfg := map[string]any{
		"apiVersion":   "nodenet.dev/v1alpha1",
		"kind":         "NodenetConfig",
		"nodeName":     opts.Name,
		"kubeconfig":   "none",
		"clusterCIDRs": []string{ClusterCIDR},
		"podCIDRs":     cidrs,
		"serviceCIDRs": []string{ServiceCIDR},
		"stateDir":     n.StateDir,
		"runDir":       n.RunDir,
		"cni":          map[string]any{"binDir": n.CNIBinDir, "confDir": n.ConfDir},
		"proxy":        map[string]any{"enabled": opts.Kubeconfig != ""}, // Services need the API
		"dns":          map[string]any{"enabled": false},
		"logging":      map[string]any{"level": "debug", "format": "json"},
	}
	if opts.Kubeconfig != "" {
		cfg["kubeconfig"] = opts.Kubeconfig
	}
	for k, v := range opts.Config {
		cfg[k] = v
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(n.ConfigPath, data, 0o644); err != nil {
		return nil, err
	}
	l.onClose(n.Stop)
	return n, nil
}

// Start runs `nodenet daemon` inside the node's namespace, logging to LogPath.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("node %s: daemon already running", n.Name)
	}
	logFile, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", "netns", "exec", n.NS.Name,
		filepath.Join(n.lab.BinDir, "nodenet"), "daemon", "--config", n.ConfigPath,
		"--cni-shim", filepath.Join(n.lab.BinDir, "nodenet-cni"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start daemon on %s: %w", n.Name, err)
	}
	done := make(chan error, 1)
	go func() {
		done <- cmd.Wait()
		logFile.Close()
	}()
	n.cmd, n.done = cmd, done
	return nil
}

// PID is the daemon's process ID (ip netns exec replaces itself with the daemon), 0 when stopped.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Kill sends sig to the daemon and, for SIGKILL or when wait is set, waits for it to exit.
func (n *Node) Kill(sig syscall.Signal, timeout time.Duration) error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-done:
	case <-time.After(timeout):
		return fmt.Errorf("node %s: daemon pid %d still running %s after %v", n.Name, cmd.Process.Pid, timeout, sig)
	}
	n.mu.Lock()
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	return nil
}

// Stop ends the daemon with SIGTERM, then SIGKILL if it does not exit in time.
func (n *Node) Stop() error {
	if err := n.Kill(syscall.SIGTERM, 10*time.Second); err != nil {
		return errors.Join(err, n.Kill(syscall.SIGKILL, 5*time.Second))
	}
	return nil
}

// Exited reports whether the daemon has exited on its own, with its wait error.
func (n *Node) Exited() (bool, error) {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return true, nil
	}
	select {
	case err := <-done:
		done <- err
		return true, err
	default:
		return false, nil
	}
}

// WaitReady waits until the daemon has written its conflist and answers CNI STATUS.
func (n *Node) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		if exited, err := n.Exited(); exited {
			return fmt.Errorf("node %s: daemon exited (%v); log %s:\n%s", n.Name, err, n.LogPath, n.LogTail(20))
		}
		rt, err := n.Runtime()
		if err == nil {
			err = rt.Status(ctx)
		}
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not ready: %w (last: %v); log tail:\n%s", n.Name, ctx.Err(), last, n.LogTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// LogTail returns the last lines of the daemon's log.
func (n *Node) LogTail(lines int) string { return Tail(n.LogPath, lines) }
