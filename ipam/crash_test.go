package ipam

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// The crash test runs this test binary as a child that allocates and
// releases as fast as it can, and kills it with SIGKILL. The child reports
// each step on stdout; every line is one write(2) of less than PIPE_BUF
// bytes, so the parent sees whole lines only:
//
//	A <id> <ips>   Allocate returned (the allocation is durable)
//	r <id>         Release is about to be called
//	R <id>         Release returned (the release is durable)
const (
	crashDirEnv  = "NODENET_IPAM_CRASH_DIR"
	crashRunEnv  = "NODENET_IPAM_CRASH_RUN"
	crashWorkers = 16
	crashLive    = 4 // allocations each worker keeps before releasing its oldest
	crashRuns    = 5
	// crashMaxLines bounds the random number of lines the parent reads
	// before it starts the random delay that ends in SIGKILL.
	crashMaxLines = 400
)

func crashConfig(dir string) Config {
	return Config{StateDir: dir, Ranges: prefixes("10.240.0.0/20", "fd00:10:240::/64")}
}

// crashChild is the child's main. It never returns unless something fails.
func crashChild(dir, run string) int {
	a, err := Open(crashConfig(dir), zap.NewNop())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	errs := make(chan error, crashWorkers)
	for w := range crashWorkers {
		go func() {
			var live []string
			for i := 0; ; i++ {
				id := fmt.Sprintf("run%s-w%d-%d", run, w, i)
				al, err := a.Allocate(Request{ContainerID: id, IfName: "eth0", Netns: "/var/run/netns/" + id})
				if err != nil {
					errs <- err
					return
				}
				fmt.Printf("A %s %s\n", id, ipsString(al.IPs))
				if live = append(live, id); len(live) <= crashLive {
					continue
				}
				fmt.Printf("r %s\n", live[0])
				if _, _, err := a.Release(live[0], "eth0"); err != nil {
					errs <- err
					return
				}
				fmt.Printf("R %s\n", live[0])
				live = live[1:]
			}
		}()
	}
	fmt.Fprintln(os.Stderr, <-errs)
	return 2
}

func TestCrashSafety(t *testing.T) {
	dir := t.TempDir()
	for run := range crashRuns {
		lines := runAndKill(t, dir, run)
		allocated := make(map[string]string) // id -> ips, from A lines
		releasing := make(map[string]bool)   // id -> whether R was seen
		for _, l := range lines {
			f := strings.SplitN(l, " ", 3)
			switch {
			case len(f) == 3 && f[0] == "A":
				allocated[f[1]] = f[2]
			case len(f) == 2 && f[0] == "r":
				releasing[f[1]] = false
			case len(f) == 2 && f[0] == "R":
				releasing[f[1]] = true
			default:
				t.Fatalf("run %d: child wrote %q", run, l)
			}
		}

		a, err := Open(crashConfig(dir), zaptest.NewLogger(t))
		if err != nil {
			t.Fatalf("run %d: reopen after SIGKILL: %v", run, err)
		}
		stored := make(map[string]string)
		owner := make(map[netip.Addr]string)
		for _, al := range a.List() {
			stored[al.ContainerID] = ipsString(al.IPs)
			for _, ip := range al.IPs {
				if other, dup := owner[ip.Addr()]; dup {
					t.Errorf("run %d: %s is allocated to both %s and %s", run, ip.Addr(), other, al.ContainerID)
				}
				owner[ip.Addr()] = al.ContainerID
			}
		}
		for id, ips := range allocated {
			got, ok := stored[id]
			done, started := releasing[id]
			switch {
			case done && ok:
				t.Errorf("run %d: %s was released but is still allocated (%s)", run, id, got)
			case !started && !ok:
				t.Errorf("run %d: %s was allocated %s and is forgotten", run, id, ips)
			case ok && got != ips:
				t.Errorf("run %d: %s was allocated %s but is stored with %s", run, id, ips, got)
			}
		}
		// The rebuilt state hands out only free addresses.
		al, err := a.Allocate(Request{ContainerID: fmt.Sprintf("after-run%d", run), IfName: "eth0"})
		if err != nil {
			t.Fatalf("run %d: Allocate after reopen: %v", run, err)
		}
		for _, ip := range al.IPs {
			if other, dup := owner[ip.Addr()]; dup {
				t.Errorf("run %d: Allocate after reopen handed out %s, held by %s", run, ip.Addr(), other)
			}
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("run %d: child reported %d allocations, %d stored", run, len(allocated), len(stored))
	}
}

// runAndKill starts the child on dir, kills it with SIGKILL at a random
// moment, and returns the whole lines it wrote.
func runAndKill(t *testing.T, dir string, run int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashRunEnv+"="+strconv.Itoa(run))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Let the child get into its stride (a random number of lines, so that
	// runs die at different points of a long history), then kill it after a
	// random delay, which lands anywhere in a commit.
	r := bufio.NewReader(stdout)
	var head strings.Builder
	for range 1 + rand.N(crashMaxLines) {
		var l string
		if l, err = r.ReadString('\n'); err != nil {
			break
		}
		head.WriteString(l)
	}
	if err == nil {
		time.Sleep(rand.N(20 * time.Millisecond))
	}
	// Kill fails only if the child has already exited, which Wait reports.
	_ = cmd.Process.Kill()
	rest, readErr := io.ReadAll(r)
	waitErr := cmd.Wait()
	if err != nil || readErr != nil {
		t.Fatalf("run %d: read child output: %v; stderr:\n%s", run, errors.Join(err, readErr), &stderr)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("run %d: child ended with %v before it was killed; stderr:\n%s", run, waitErr, &stderr)
	}
	out := head.String() + string(rest)
	// Drop whatever follows the last newline: a line the kill cut short.
	return strings.Split(out[:strings.LastIndexByte(out, '\n')], "\n")
}
