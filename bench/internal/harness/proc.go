package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/nodenet/nodenet/e2e/lab"
)

// Proc is a side's process under test, started afresh every round: a NetnsProc, or a lab node's
// nodenet daemon (NodenetDaemon).
type Proc interface {
	Start() error
	// Stop ends the process (SIGTERM, then SIGKILL) and waits for it; stopping a stopped
	// process does nothing.
	Stop() error
	// PID is the process's own ID while it runs, else 0.
	PID() int
	// Exited reports whether the process has ended on its own, with the tail of its log.
	Exited() (bool, string)
}

var (
	_ Proc = (*NetnsProc)(nil)
	_ Proc = NodenetDaemon{}
)

// NodenetDaemon is a lab node's own `nodenet daemon`. MemoryLimit, when set, is its GOMEMLIMIT,
// as deploy/ would set it from the container's memory limit.
type NodenetDaemon struct {
	Node        *lab.Node
	MemoryLimit string
}

// Start starts the daemon. The lab starts it with the benchmark's own environment, so a memory
// limit is put there only while the daemon starts: the control plane and the peers never get it.
func (d NodenetDaemon) Start() error {
	if d.MemoryLimit == "" {
		return d.Node.Start()
	}
	if err := os.Setenv("GOMEMLIMIT", d.MemoryLimit); err != nil {
		return err
	}
	defer os.Unsetenv("GOMEMLIMIT")
	return d.Node.Start()
}

func (d NodenetDaemon) Stop() error { return d.Node.Stop() }
func (d NodenetDaemon) PID() int    { return d.Node.PID() }

func (d NodenetDaemon) Exited() (bool, string) {
	exited, err := d.Node.Exited()
	if !exited {
		return false, ""
	}
	return true, fmt.Sprintf("(%v)\n%s", err, d.Node.LogTail(20))
}

// stopGrace is how long a stopped process has between SIGTERM and SIGKILL.
const stopGrace = 10 * time.Second

// NetnsProc is a program run in a namespace as ip netns exec's child (which replaces itself with
// the program, so the PID is the program's), started afresh every round: kube-proxy, CoreDNS, a
// trivial responder. Its output is appended to Log.
type NetnsProc struct {
	Name string
	NS   *lab.Netns
	Argv []string
	Dir  string // working directory; "" is the benchmark's
	Log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts the program; it must not be running.
func (p *NetnsProc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.Name)
	}
	f, err := os.OpenFile(p.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.NS.Name}, p.Argv...)...)
	cmd.Dir = p.Dir
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		// The exit status of a stopped program is expected to be a signal.
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// Stop ends the program (SIGTERM, then SIGKILL after a grace period) and waits for it; stopping
// a stopped program does nothing.
func (p *NetnsProc) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	return stop(cmd.Process, done, p.Name)
}

// PID is the program's process ID while it runs, else 0.
func (p *NetnsProc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited reports whether the program has ended on its own (or was never started), with the tail
// of its log.
func (p *NetnsProc) Exited() (bool, string) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		default:
			return false, ""
		}
	}
	return true, lab.Tail(p.Log, 20)
}

// stop sends SIGTERM to proc, then SIGKILL after a grace period, and waits until done is closed
// (by whoever waits for the process).
func stop(proc *os.Process, done <-chan struct{}, name string) error {
	if err := proc.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s (pid %d): %w", name, proc.Pid, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(stopGrace):
	}
	if err := proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", name, proc.Pid, err)
	}
	<-done
	return nil
}
