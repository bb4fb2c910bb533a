// Package e2e runs nodenet as users run it: real daemons in node namespaces, the real shim,
// libcni as the container runtime, and real packets. Every namespace is created and removed by
// the tests; nothing touches the host's own network namespace.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nodenet/nodenet/e2e/lab"
)

// binDir holds the nodenet and nodenet-cni binaries built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	if name := os.Getenv(resolveEnv); name != "" {
		resolveAndExit(name)
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "e2e: these tests need root (network namespaces); CI must run them as root")
			return 1
		}
		fmt.Fprintln(os.Stderr, "e2e: skipped: not root")
		return 0
	}
	dir, err := os.MkdirTemp("", "nodenet-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if prebuilt := os.Getenv("NODENET_BIN_DIR"); prebuilt != "" {
		binDir = prebuilt
	} else {
		binDir = dir
		if err := build(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	before, err := lab.HostNetworkState(fmt.Sprintf("nt%d", os.Getpid()%10000))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	after, err := lab.HostNetworkState(fmt.Sprintf("nt%d", os.Getpid()%10000))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if before != after {
		fmt.Fprintf(os.Stderr, "e2e: the host's own network namespace changed during the tests:\n--- before\n%s\n--- after\n%s\n", before, after)
		return 1
	}
	return code
}

func build(dir string) error {
	root, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	for _, b := range []struct{ out, pkg string }{{"nodenet", "."}, {"nodenet-cni", "./cmd/nodenet-cni"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return nil
}

var labCount atomic.Int32

// newLab returns a lab removed when the test ends, pass or fail.
func newLab(t *testing.T) *lab.Lab {
	t.Helper()
	prefix := fmt.Sprintf("nt%d%d", os.Getpid()%10000, labCount.Add(1))
	l, err := lab.New(binDir, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
	})
	return l
}

// startNode adds a node to the lab, starts its daemon and waits until it is ready.
func startNode(t *testing.T, l *lab.Lab, opts lab.NodeOptions) *lab.Node {
	t.Helper()
	n, err := l.AddNode(opts)
	if err != nil {
		t.Fatal(err)
	}
	runDaemon(t, n)
	return n
}

// runDaemon starts a node's daemon, waits until it is ready, and shows its log if the test fails.
func runDaemon(t *testing.T, n *lab.Node) {
	t.Helper()
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log of %s:\n%s", n.Name, n.LogTail(40))
		}
	})
}

// podVeths lists the host-side pod veths in a node's namespace.
func podVeths(t *testing.T, n *lab.Node) []string {
	t.Helper()
	out, err := n.NS.Run("ip", "-o", "link", "show", "type", "veth")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(fields[1], ":"), "@")
		if strings.HasPrefix(name, "nn") {
			names = append(names, name)
		}
	}
	return names
}
