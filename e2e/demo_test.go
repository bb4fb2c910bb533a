package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemoUpDown runs the demo as `sudo make demo` and `sudo make demo-down` do: the lab must show
// pods on different nodes reaching each other, and down must leave no namespace, process or file.
func TestDemoUpDown(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	demo := filepath.Join(t.TempDir(), "nodenet-demo")
	build := exec.Command("go", "build", "-o", demo, "./hack/demo")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build demo: %v\n%s", err, out)
	}
	state := filepath.Join(t.TempDir(), "state")
	prefix := fmt.Sprintf("ntd%d", os.Getpid()%10000)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(demo, append(args, "--state", state)...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		// Only if the test failed half-way: stop what is left, ignoring "no demo is running".
		_, _ = run("down")
	})
	out, err := run("up", "--bin", binDir, "--cluster-bin", clusterBinDir(t), "--prefix", prefix)
	if err != nil {
		t.Fatalf("demo up: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ok   ping default-test → default-nginx",
		"ok   curl http://",
		"nginx-svc",
		"(NodePort of default/nginx-svc on node2) from outside the cluster",
		"map service-ips-v4",
		"ok   dig +search default-svc  — short name, same namespace → 10.",
		"ok   dig +search test-svc  — short name, other namespace (no answer, as in the article) → (no such name)",
		"ok   dig +search www.example.com  — external name, forwarded and cached → 192.0.2.80",
		"sudo make demo-down",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAIL") {
		t.Errorf("demo reported failures:\n%s", out)
	}
	if out, err := run("down"); err != nil {
		t.Fatalf("demo down: %v\n%s", err, out)
	}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s left after demo down", e.Name())
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state directory %s left after demo down", state)
	}
	if out, err := exec.Command("pgrep", "-f", state).Output(); err == nil {
		t.Errorf("processes left after demo down: %s", out)
	}
}
