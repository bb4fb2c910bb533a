package harness

import (
	"fmt"
	"os"
	"sync"

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

// NetnsProc is a program run in a namespace, started afresh every round: kube-proxy, CoreDNS, a
// trivial responder. Each run is a process of the lab (lab.StartProcess), which ends it at the
// latest when the lab closes; its output is appended to Log.
type NetnsProc struct {
	Name string
	Lab  *lab.Lab
	NS   *lab.Netns
	Argv []string
	Log  string

	mu   sync.Mutex
	proc *lab.Process // the current run; nil when stopped
}

// Start starts the program; it must not be running.
func (p *NetnsProc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return fmt.Errorf("%s already running", p.Name)
	}
	// ip netns exec replaces itself with the program, so the PID is the program's.
	proc, err := p.Lab.StartProcess(p.Name, p.Log, append([]string{"ip", "netns", "exec", p.NS.Name}, p.Argv...)...)
	if err != nil {
		return err
	}
	p.proc = proc
	return nil
}

// Stop ends the program (SIGTERM, then SIGKILL after a grace period) and waits for it; stopping
// a stopped program does nothing.
func (p *NetnsProc) Stop() error {
	p.mu.Lock()
	proc := p.proc
	p.proc = nil
	p.mu.Unlock()
	if proc == nil {
		return nil
	}
	return proc.Stop()
}

// PID is the program's process ID while it runs, else 0.
func (p *NetnsProc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return 0
	}
	return p.proc.PID()
}

// Exited reports whether the program has ended on its own (or was never started), with the tail
// of its log.
func (p *NetnsProc) Exited() (bool, string) {
	p.mu.Lock()
	proc := p.proc
	p.mu.Unlock()
	if proc != nil && !proc.Exited() {
		return false, ""
	}
	return true, lab.Tail(p.Log, 20)
}
