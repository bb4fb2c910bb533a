package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is a long-running process the lab started; Close ends it by PID.
type Process struct {
	Name string
	Log  string

	cmd  *exec.Cmd
	done chan struct{}
}

// startProc runs argv inside ns (ip netns exec replaces itself with the program, so the PID is
// the program's), with stdout and stderr appended to logPath. Close stops it.
func (l *Lab) startProc(ns *Netns, name, logPath string, argv ...string) (*Process, error) {
	return l.StartProcess(name, logPath, append([]string{"ip", "netns", "exec", ns.Name}, argv...)...)
}

// StartProcess runs argv with stdout and stderr appended to logPath; Close stops it.
func (l *Lab) StartProcess(name, logPath string, argv ...string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, cmd: cmd, done: make(chan struct{}), Log: logPath}
	go func() {
		// Wait's error is the exit status; a process stopped by Close is expected to fail.
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	l.onClose(p.Stop)
	return p, nil
}

// PID is the process's ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, then SIGKILL after a grace period, and waits for the exit.
func (p *Process) Stop() error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(15 * time.Second):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", p.Name, err)
	}
	<-p.done
	return nil
}
