package main

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

// readyMarker is the line the background demo prints once the lab is shown.
const readyMarker = "DEMO-READY"

// state is what `up` leaves for `shell` and `down`.
type state struct {
	PID             int    `json:"pid"`
	ControlPlaneNS  string `json:"controlPlaneNetns"`
	AdminKubeconfig string `json:"adminKubeconfig"`
	ClusterBin      string `json:"clusterBin"`
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }
func logPath(dir string) string   { return filepath.Join(dir, "demo.log") }

func readState(dir string) (*state, error) {
	data, err := os.ReadFile(statePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errors.New("no demo is running (start one with: sudo make demo)")
	}
	if err != nil {
		return nil, err
	}
	var s state
	return &s, json.Unmarshal(data, &s)
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// up starts `demo serve` in its own session, so the cluster outlives this command, and shows its
// output until the lab is complete.
func up(dir, bin, clusterBin, prefix string) error {
	if s, err := readState(dir); err == nil && alive(s.PID) {
		return fmt.Errorf("a demo is already running (pid %d); use: sudo make demo-shell, or sudo make demo-down", s.PID)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logFile, err := os.Create(logPath(dir))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(exe, "serve", "--state", dir, "--bin", bin, "--cluster-bin", clusterBin, "--prefix", prefix)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return follow(logPath(dir), exited)
}

// follow prints the background demo's log as it grows, until the ready marker or its exit.
func follow(path string, exited <-chan error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) == readyMarker {
			fmt.Println()
			fmt.Println("The cluster keeps running. Poke it with:  sudo make demo-shell   (kubectl inside the control-plane namespace)")
			fmt.Println("Tear it down with:                       sudo make demo-down")
			return nil
		}
		fmt.Print(line)
		if errors.Is(err, io.EOF) {
			select {
			case werr := <-exited:
				rest, _ := io.ReadAll(r) // the last words of a failed demo; nothing to do if unreadable
				fmt.Print(string(rest))
				return fmt.Errorf("the demo stopped before the lab was complete (%v); log: %s", werr, path)
			case <-time.After(100 * time.Millisecond):
			}
		} else if err != nil {
			return err
		}
	}
}

// shell opens a shell in the control-plane namespace with kubectl set up for the cluster.
func shell(dir string) error {
	s, err := readState(dir)
	if err != nil {
		return err
	}
	if !alive(s.PID) {
		return fmt.Errorf("the demo (pid %d) is not running; start it with: sudo make demo", s.PID)
	}
	fmt.Printf("kubectl talks to the demo cluster here (try: kubectl get nodes -o wide; kubectl get pods -A -o wide). Exit to leave.\n")
	sh := os.Getenv("SHELL")
	if sh == "" {
		sh = "/bin/bash"
	}
	cmd := exec.Command("ip", "netns", "exec", s.ControlPlaneNS, "env",
		"KUBECONFIG="+s.AdminKubeconfig, "PATH="+s.ClusterBin+":"+os.Getenv("PATH"), "PS1=[nodenet-demo] \\w# ", sh)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}

// down stops the background demo, which removes everything it created, and checks it is gone.
func down(dir string) error {
	s, err := readState(dir)
	if err != nil {
		return err
	}
	if alive(s.PID) {
		if err := syscall.Kill(s.PID, syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop demo pid %d: %w", s.PID, err)
		}
		deadline := time.Now().Add(90 * time.Second)
		for alive(s.PID) {
			if time.Now().After(deadline) {
				return fmt.Errorf("demo pid %d still running after 90s; see %s", s.PID, logPath(dir))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if out, err := os.ReadFile(logPath(dir)); err == nil {
		if i := strings.LastIndex(string(out), "=== Cleaning up"); i >= 0 {
			fmt.Print(string(out[i:]))
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", s.ControlPlaneNS)); err == nil {
		return fmt.Errorf("namespace %s is still there after the demo stopped", s.ControlPlaneNS)
	}
	return os.RemoveAll(dir)
}
