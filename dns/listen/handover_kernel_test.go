package listen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/nodenet/nodenet/dns/hostnet"
	"github.com/nodenet/nodenet/internal/nstest"
)

// nodenetBinary is the nodenet binary under test: the one `make test` built (NODENET_BIN_DIR),
// else one built from this tree now.
func nodenetBinary(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("NODENET_BIN_DIR"); dir != "" {
		return filepath.Join(dir, "nodenet")
	}
	bin := filepath.Join(t.TempDir(), "nodenet")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nodenet/nodenet").CombinedOutput()
	if err != nil {
		t.Fatalf("build nodenet: %v\n%s", err, out)
	}
	return bin
}

// process is a child the test started; stop ends it by its PID when the test ends, and its
// output is shown if the test failed.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *os.File
	done chan struct{} // closed when the process has exited; err is then how
	err  error
}

func start(t *testing.T, name string, cmd *exec.Cmd) *process {
	t.Helper()
	out, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = out
	p := &process{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = out
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t, syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("output of %s:\n%s", name, b)
		}
		out.Close()
	})
	return p
}

// stop sends sig and waits for the exit, returning how it ended; a process already gone is left
// as it is.
func (p *process) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if !p.exited() {
		if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("signal %s: %v", p.name, err)
		}
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not exit on %v", p.name, sig)
		return nil
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startReader starts the reader process in the namespace and waits until its sockets are open.
func startReader(t *testing.T, node ns.NetNS, name string, spec readerSpec) *process {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(node.Path()), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), readerEnv+"="+string(b))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, name, cmd)
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = errors.New("said " + line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s not ready", name)
	}
	return p
}

// killedInFlight bounds how long before SIGKILL a datagram the killed reader took with it can
// have been sent: a reader answers within microseconds of reading, but on a busy machine it may be
// descheduled between the two.
const killedInFlight = 100 * time.Millisecond

// TestRestartUnderLoad is the acceptance test of the design: a real `nodenet dns-keeper`, a
// reader that is killed with SIGKILL and the next one stopped with SIGTERM while a client sends
// 200 datagrams a second to 169.254.20.10:53; every datagram, including those sent while no
// reader ran, is answered, and a TCP connection made in a gap is answered by the next reader.
// The one exception is what SIGKILL leaves no chance to answer: a datagram the killed reader had
// already read, at most one per socket, sent just before the kill.
func TestRestartUnderLoad(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireTool(t, "ip")
	bin := nodenetBinary(t)
	node := nstest.NewNS(t)
	dnsAddr := netip.MustParseAddr("169.254.20.10")
	if _, err := hostnet.EnsureInterface(nstest.NetlinkHandle(t, node), []netip.Addr{dnsAddr}); err != nil {
		t.Fatal(err)
	}
	if _, err := hostnet.EnsureNotrack(nstest.NFTConn(t, node), []netip.Addr{dnsAddr}, 53); err != nil {
		t.Fatal(err)
	}

	socket := filepath.Join(t.TempDir(), "run", "dns-keeper.sock")
	keeper := start(t, "keeper", exec.Command(bin, "dns-keeper", "--socket", socket, "--log-level", "debug"))
	waitServed(t, socket)
	spec := readerSpec{Keeper: socket, Addr: dnsAddr, Port: 53, UDPSockets: 2}
	to := netip.AddrPortFrom(dnsAddr, 53)

	reader := startReader(t, node, "reader-1", spec)
	var client *echoClient
	err := node.Do(func(ns.NetNS) error {
		var err error
		client, err = dialEchoClient(to, 8)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.close)
	ctx, stopSending := context.WithCancel(context.Background())
	var sender sync.WaitGroup
	sender.Go(func() {
		for ctx.Err() == nil {
			client.send(t, 1, 5*time.Millisecond) // 200 a second
		}
	})
	defer func() {
		stopSending()
		sender.Wait()
	}()

	gapSent := 0
	var killed [2]time.Time
	for i, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		time.Sleep(300 * time.Millisecond)
		stopFrom := time.Now()
		err := reader.stop(t, sig)
		if sig == syscall.SIGKILL {
			killed = [2]time.Time{stopFrom.Add(-killedInFlight), time.Now()}
		}
		switch {
		case sig == syscall.SIGKILL && !strings.Contains(errString(err), "killed"):
			t.Fatalf("reader after SIGKILL: %v", err)
		case sig == syscall.SIGTERM && err != nil:
			t.Fatalf("reader after SIGTERM: %v", err)
		}
		before := client.sentCount()
		var pending net.Conn
		err = node.Do(func(ns.NetNS) error {
			var err error
			pending, err = dialLine(to, "in gap "+sig.String())
			return err
		})
		if err != nil {
			t.Fatalf("connect while no reader runs: %v", err)
		}
		t.Cleanup(func() { pending.Close() })
		time.Sleep(300 * time.Millisecond)
		reader = startReader(t, node, "reader-"+string(rune('2'+i)), spec)
		gapSent += client.sentCount() - before
		readAnswer(t, pending, "in gap "+sig.String())
	}
	time.Sleep(300 * time.Millisecond)
	stopSending()
	sender.Wait()
	lost := client.wantAllBut(t, spec.UDPSockets, killed)
	t.Logf("%d datagrams sent, %d of them while no reader ran; %d lost in the killed reader", client.sentCount(), gapSent, lost)
	if gapSent == 0 {
		t.Fatal("nothing was sent while no reader ran")
	}
	if keeper.exited() {
		t.Fatalf("keeper exited: %v", keeper.err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (e *echoClient) sentCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return int(e.sent)
}

// waitServed waits until a keeper answers on path.
func waitServed(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unixpacket", path)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no keeper at %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
