// Package harness holds what the benchmarks share around their measurements: the start of the
// program (root, signals, the exit code), the progress log, the binaries they need, and the
// processes they start afresh in a node's namespace every round.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Main runs a benchmark as root (it makes network namespaces) until run returns or SIGINT or
// SIGTERM cancels its context, prints run's error after the benchmark's name, and returns the
// exit code. makeTarget is the make target to suggest to a user who is not root.
func Main(name, makeTarget string, run func(context.Context) error) int {
	if os.Geteuid() != 0 {
		fmt.Fprintf(os.Stderr, "%s: needs root to create network namespaces (run: sudo make %s)\n", name, makeTarget)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}

// Progress returns a log of progress lines on w, each stamped with the seconds since the log
// was made.
func Progress(w io.Writer) func(format string, args ...any) {
	started := time.Now()
	return func(format string, args ...any) {
		fmt.Fprintf(w, "[%6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
	}
}

// ParseCounts reads a comma-separated list of positive counts ("10,1000") into sorted, distinct
// numbers.
func ParseCounts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive count", f)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Binaries returns dir as an absolute path once it holds nodenet and nodenet-cni.
func Binaries(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for _, name := range []string{"nodenet", "nodenet-cni"} {
		if _, err := os.Stat(filepath.Join(abs, name)); err != nil {
			return "", errors.Join(err, errors.New("run make build first"))
		}
	}
	return abs, nil
}

// Built runs a build script of hack/ (hack/cluster-bins.sh, hack/coredns-bin.sh) and returns the
// last line it prints: what it built. Its own progress goes to progress.
func Built(ctx context.Context, progress io.Writer, script string) (string, error) {
	cmd := exec.CommandContext(ctx, script)
	cmd.Stderr = progress
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}
