// Command pause is the sandbox process of the real-node test cluster's pods: the first process
// of every pod, holding its namespaces open while the pod lives. It does what the upstream pause
// container does, in Go so that it builds with the rest of the module: it waits for SIGINT or
// SIGTERM and exits 0, and it reaps the zombies that become its children when it is PID 1 of a
// shared PID namespace.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is what -v prints; the image is tagged with the upstream version it stands in for.
const version = "3.10.2-nodenet"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause", version)
		return
	}
	// Buffered so that a signal that arrives while reap runs is not lost; SIGCHLD coalesces,
	// which reap makes up for by waiting until no child is left to collect.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	// After Notify, so that whoever reads this line knows the signals are handled.
	if os.Getpid() != 1 {
		// Not an error: the process still holds namespaces open, it just has no orphans to reap.
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1, so orphans are not reaped here")
	}
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: shutting down, got signal %v\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited, without blocking for the ones still running.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			// ECHILD (no children) or 0 (children, none exited yet): nothing left to collect.
			return
		}
	}
}
