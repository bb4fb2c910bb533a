package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// listFloor times bench/proxy/listfloor: exec → both lists of the API server received and
// decoded, in a node namespace with a proxy's identity. No proxy can program its last Service
// before that, so it bounds from below what any cold start can reach on this machine and API
// server, and a cold start minus it is what the proxy itself adds.
type listFloor struct {
	bin        string
	netns      string
	kubeconfig string
}

// buildListFloor compiles the floor command into dir; the benchmark runs from the module root.
func buildListFloor(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "listfloor")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./bench/proxy/listfloor")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build bench/proxy/listfloor: %w", err)
	}
	return bin, nil
}

// measure runs the floor once and checks it saw at least want Services and EndpointSlices.
func (f listFloor) measure(ctx context.Context, want int) (time.Duration, error) {
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", f.netns, f.bin, f.kubeconfig)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("listfloor: %w: %s", err, errOut.Bytes())
	}
	var services, slices int
	if _, err := fmt.Sscanf(out.String(), "services=%d endpointslices=%d", &services, &slices); err != nil {
		return 0, fmt.Errorf("listfloor printed %q: %w", out.Bytes(), err)
	}
	if services < want || slices < want {
		return 0, fmt.Errorf("listfloor saw %d Services and %d EndpointSlices, want at least %d of each", services, slices, want)
	}
	return took, nil
}
