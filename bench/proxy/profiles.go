package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// profiler takes Go profiles of nodenet's daemon through its metrics server (/debug/pprof/): a CPU
// profile from the process start on, to see where a cold start goes, and a heap profile once it
// has settled. kube-proxy serves no profiles unless configured to, so it gets none.
type profiler struct {
	dir     string
	seconds int
}

// cpuDuringColdStart starts a CPU profile of side s as soon as its metrics server answers, and
// writes it to dir/name-cpu.pprof; the returned channel gives the outcome once the profile is
// written. The daemon opens its metrics server first thing, so the profile misses only the
// process start.
func (p *profiler) cpuDuringColdStart(ctx context.Context, s *side, name string) <-chan error {
	done := make(chan error, 1)
	go func() {
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.metricsAddr, p.seconds)
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := p.fetch(ctx, s, url, name+"-cpu.pprof", time.Duration(p.seconds+10)*time.Second)
			if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
				done <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return done
}

// heap writes the side's heap profile (after a collection) to dir/name-heap.pprof.
func (p *profiler) heap(ctx context.Context, s *side, name string) error {
	return p.fetch(ctx, s, "http://"+s.metricsAddr+"/debug/pprof/heap?gc=1", name+"-heap.pprof", 30*time.Second)
}

func (p *profiler) fetch(ctx context.Context, s *side, url, file string, timeout time.Duration) error {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return s.node.NS.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(p.dir, file))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return f.Close()
}
