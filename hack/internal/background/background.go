// Package background runs a lab cluster in the background for the Makefile's commands: `up`
// starts the program's `serve` command in a session of its own, shows its output until the
// cluster is ready and leaves it running; `shell` opens kubectl against it; `down` stops it, which
// removes everything it created. The demo and the real-node cluster share it.
package background

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ReadyMarker is the line `serve` prints once the cluster is ready.
const ReadyMarker = "LAB-READY"

// CleanupHeading starts the part of serve's output that `down` shows.
const CleanupHeading = "=== Cleaning up"

// State is what `serve` records for `shell`, `down` and other commands.
type State struct {
	PID             int    `json:"pid"`
	ControlPlaneNS  string `json:"controlPlaneNetns"`
	AdminKubeconfig string `json:"adminKubeconfig"`
	ClusterBin      string `json:"clusterBin"`
}

// Control names a background cluster: its state directory and the make targets that drive it,
// which messages name.
type Control struct {
	Dir                    string
	UpTarget, ShellTarget  string
	DownTarget, PromptName string
	// Sweep, if set, removes what a serve process killed before its cleanup left behind; Down
	// calls it with the namespace prefix when serve is no longer alive or left namespaces.
	Sweep func(prefix string) error
}

func (c Control) statePath() string { return filepath.Join(c.Dir, "state.json") }

// LogPath is serve's output.
func (c Control) LogPath() string { return filepath.Join(c.Dir, "serve.log") }

// WriteState records the running cluster; serve calls it once the control plane is up.
func (c Control) WriteState(s State) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(c.statePath(), data, 0o600)
}

// ReadState returns the running cluster's state, or an error saying how to start one.
func (c Control) ReadState() (*State, error) {
	data, err := os.ReadFile(c.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no cluster is running (start one with: sudo make %s)", c.UpTarget)
	}
	if err != nil {
		return nil, err
	}
	var s State
	return &s, json.Unmarshal(data, &s)
}

// Running returns the state of a cluster whose serve process is alive.
func (c Control) Running() (*State, error) {
	s, err := c.ReadState()
	if err != nil {
		return nil, err
	}
	if !alive(s.PID) {
		return nil, fmt.Errorf("the cluster (pid %d) is not running; start it with: sudo make %s", s.PID, c.UpTarget)
	}
	return s, nil
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// Up starts `<this program> serve serveArgs...` in its own session, so the cluster outlives this
// command, and shows its output until the cluster is ready.
func (c Control) Up(serveArgs ...string) error {
	if s, err := c.ReadState(); err == nil && alive(s.PID) {
		return fmt.Errorf("a cluster is already running (pid %d); use: sudo make %s, or sudo make %s", s.PID, c.ShellTarget, c.DownTarget)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logFile, err := os.Create(c.LogPath())
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(exe, append([]string{"serve"}, serveArgs...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return c.follow(exited)
}

// follow prints serve's log as it grows, until the ready marker or its exit.
func (c Control) follow(exited <-chan error) error {
	f, err := os.Open(c.LogPath())
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) == ReadyMarker {
			fmt.Println()
			fmt.Printf("The cluster keeps running. Poke it with:  sudo make %s   (kubectl inside the control-plane namespace)\n", c.ShellTarget)
			fmt.Printf("Tear it down with:                       sudo make %s\n", c.DownTarget)
			return nil
		}
		fmt.Print(line)
		if errors.Is(err, io.EOF) {
			select {
			case werr := <-exited:
				rest, _ := io.ReadAll(r) // the last words of a failed run; nothing to do if unreadable
				fmt.Print(string(rest))
				return fmt.Errorf("stopped before the cluster was ready (%v); log: %s", werr, c.LogPath())
			case <-time.After(100 * time.Millisecond):
			}
		} else if err != nil {
			return err
		}
	}
}

// Command returns argv run inside the control-plane namespace with kubectl on PATH and set up for
// the cluster.
func (s *State) Command(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", s.ControlPlaneNS, "env",
		"KUBECONFIG=" + s.AdminKubeconfig, "PATH=" + s.ClusterBin + ":" + os.Getenv("PATH")}, argv...)...)
}

// Shell opens a shell in the control-plane namespace with kubectl set up for the cluster.
func (c Control) Shell() error {
	s, err := c.Running()
	if err != nil {
		return err
	}
	fmt.Printf("kubectl talks to the cluster here (try: kubectl get nodes -o wide; kubectl get pods -A -o wide). Exit to leave.\n")
	sh := os.Getenv("SHELL")
	if sh == "" {
		sh = "/bin/bash"
	}
	cmd := s.Command("PS1=["+c.PromptName+"] \\w# ", sh)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}

// Down stops serve, which removes everything it created, and checks it is gone.
func (c Control) Down() error {
	s, err := c.ReadState()
	if err != nil {
		return err
	}
	if alive(s.PID) {
		if err := syscall.Kill(s.PID, syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop pid %d: %w", s.PID, err)
		}
		deadline := time.Now().Add(3 * time.Minute)
		for alive(s.PID) {
			if time.Now().After(deadline) {
				return fmt.Errorf("pid %d still running after 3 minutes; see %s", s.PID, c.LogPath())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if out, err := os.ReadFile(c.LogPath()); err == nil {
		if i := strings.LastIndex(string(out), CleanupHeading); i >= 0 {
			fmt.Print(string(out[i:]))
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", s.ControlPlaneNS)); err == nil {
		if c.Sweep == nil {
			return fmt.Errorf("namespace %s is still there after the cluster stopped", s.ControlPlaneNS)
		}
		prefix := strings.TrimSuffix(s.ControlPlaneNS, "-cp")
		fmt.Printf("the cluster did not clean up after itself: sweeping what is left of %s-*\n", prefix)
		if err := c.Sweep(prefix); err != nil {
			return err
		}
	}
	return os.RemoveAll(c.Dir)
}
