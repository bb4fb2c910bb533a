package images

import (
	"bufio"
	"crypto/tls"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestPauseExitsOnSignal: the pause program Build compiles stops with status 0 on SIGTERM and
// SIGINT, as the kubelet's sandbox teardown expects, and answers -v.
func TestPauseExitsOnSignal(t *testing.T) {
	opts, _, _ := sharedArchive(t) // its fake agnhost is the pause program
	out, err := exec.Command(opts.AgnhostPath, "-v").Output()
	if err != nil || !strings.HasPrefix(string(out), "pause ") {
		t.Fatalf("pause -v: %q, %v", out, err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(opts.AgnhostPath)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Its first line comes once the signal handlers are in place: a signal sent before
		// would end it by the default action, with a status the test would take for a bug.
		kill := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
		r := bufio.NewReader(stderr)
		first, _ := r.ReadString('\n')
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(r)
		err = cmd.Wait()
		kill.Stop()
		if err != nil {
			t.Errorf("%v: pause exited with %v; stderr: %s%s", sig, err, first, rest)
		}
	}
}

// TestLocalhostCert: the certificate agnhost carries is a valid pair for localhost, and the same
// bytes on every build so the cache key does not move.
func TestLocalhostCert(t *testing.T) {
	cert, key, err := localhostCert()
	if err != nil {
		t.Fatal(err)
	}
	cert2, key2, err := localhostCert()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(cert)+string(key), string(cert2)+string(key2)); diff != "" {
		t.Errorf("second certificate differs (-first +second):\n%s", diff)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := pair.Leaf.VerifyHostname("localhost"); err != nil {
		t.Error(err)
	}
}
