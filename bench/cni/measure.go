package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/nodenet/nodenet/bench/internal/summary"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/nodenet/nodenet/e2e/lab"
)

// roundResult is what one side measured in one round.
type roundResult struct {
	seqAdd, seqDel   []time.Duration // one per pod, in order
	concAdd, concDel time.Duration   // wall time until every pod was done
	// daemon is the daemon's own mean time per command in each phase, from its metrics (nodenet
	// only): what is left of an ADD once the shim's exec and libcni are taken away.
	daemon map[phase]time.Duration
}

type phase string

const (
	phaseSeqAdd  phase = "seq ADD"
	phaseSeqDel  phase = "seq DEL"
	phaseConcAdd phase = "conc ADD"
	phaseConcDel phase = "conc DEL"
)

// round runs the four timed phases over the first n pods: sequential ADDs, sequential DELs,
// n concurrent ADDs, n concurrent DELs. Every DEL phase leaves the node as it found it.
func (s *side) round(ctx context.Context, n int) (roundResult, error) {
	pods := s.pods[:n]
	add := func(p *lab.Pod) error { return s.add(ctx, p) }
	del := func(p *lab.Pod) error { return s.del(ctx, p) }
	res := roundResult{daemon: map[phase]time.Duration{}}
	phases := []struct {
		ph  phase
		run func() error
	}{
		{phaseSeqAdd, func() (err error) { res.seqAdd, err = sequential(pods, add); return err }},
		{phaseSeqDel, func() (err error) { res.seqDel, err = sequential(pods, del); return err }},
		{phaseConcAdd, func() (err error) { res.concAdd, err = concurrent(pods, add); return err }},
		{phaseConcDel, func() (err error) { res.concDel, err = concurrent(pods, del); return err }},
	}
	for _, p := range phases {
		if err := s.timed(ctx, p.ph, &res, p.run); err != nil {
			return res, err
		}
	}
	return res, nil
}

// timed runs one phase and, on a side with a daemon, records the daemon's mean time per command
// over it. The scrapes are outside the timed region.
func (s *side) timed(ctx context.Context, ph phase, res *roundResult, run func() error) error {
	var before requestTotals
	if s.daemon {
		var err error
		if before, err = s.daemonTotals(ctx); err != nil {
			return err
		}
	}
	if err := run(); err != nil {
		return fmt.Errorf("%s %s: %w", s.name, ph, err)
	}
	if !s.daemon {
		return nil
	}
	after, err := s.daemonTotals(ctx)
	if err != nil {
		return err
	}
	command := "ADD"
	if ph == phaseSeqDel || ph == phaseConcDel {
		command = "DEL"
	}
	res.daemon[ph] = time.Duration(after.meanSince(before, command) * float64(time.Second))
	return nil
}

// sequential runs f for one pod after another and returns the time of each call.
func sequential(pods []*lab.Pod, f func(*lab.Pod) error) ([]time.Duration, error) {
	took := make([]time.Duration, 0, len(pods))
	for _, p := range pods {
		start := time.Now()
		if err := f(p); err != nil {
			return nil, err
		}
		took = append(took, time.Since(start))
	}
	return took, nil
}

// concurrent runs f for every pod at once and returns the wall time until the last one finished.
func concurrent(pods []*lab.Pod, f func(*lab.Pod) error) (time.Duration, error) {
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	start := time.Now()
	for i, p := range pods {
		wg.Go(func() {
			errs[i] = f(p)
		})
	}
	wg.Wait()
	wall := time.Since(start)
	return wall, errors.Join(errs...)
}

// memoryWith ADDs the first n pods at once, reads the daemon's memory, and DELs them again.
func (s *side) memoryWith(ctx context.Context, n int) (memory, error) {
	pods := s.pods[:n]
	if _, err := concurrent(pods, func(p *lab.Pod) error { return s.add(ctx, p) }); err != nil {
		return memory{}, fmt.Errorf("%s: ADD %d pods: %w", s.name, n, err)
	}
	m, err := readMemory(s.node.PID())
	if err != nil {
		return memory{}, err
	}
	if _, err := concurrent(pods, func(p *lab.Pod) error { return s.del(ctx, p) }); err != nil {
		return memory{}, fmt.Errorf("%s: DEL %d pods: %w", s.name, n, err)
	}
	return m, nil
}

// floor is the process-start cost an ADD cannot avoid, as p50s.
type floor struct {
	// direct is /bin/true started the way invoke.RawExec does it, from the benchmark's own
	// namespace; trueInNetns is the same through the side's netnsExec. Their difference is what
	// starting plugins inside the node namespace adds.
	direct, trueInNetns time.Duration
	// plugins are the side's plugin binaries answering VERSION through netnsExec, by name.
	plugins map[string]time.Duration
}

// execFloor times fork+exec of /bin/true and of each binary an ADD runs, answering VERSION,
// samples times each. Direct and in-namespace starts of /bin/true alternate, so noise hits both.
func (s *side) execFloor(ctx context.Context, samples int) (floor, error) {
	stdin := fmt.Appendf(nil, `{"cniVersion":%q}`, s.list.CNIVersion)
	env := []string{"CNI_COMMAND=VERSION"}
	timeIt := func(f func() error) (time.Duration, error) {
		start := time.Now()
		err := f()
		return time.Since(start), err
	}
	var direct, inNetns []time.Duration
	for range samples {
		d, err := timeIt(func() error { return exec.CommandContext(ctx, "/bin/true").Run() })
		if err != nil {
			return floor{}, fmt.Errorf("exec /bin/true: %w", err)
		}
		direct = append(direct, d)
		if d, err = timeIt(func() error { _, err := s.exec.ExecPlugin(ctx, "/bin/true", nil, env); return err }); err != nil {
			return floor{}, fmt.Errorf("exec /bin/true in %s: %w", s.node.NS.Name, err)
		}
		inNetns = append(inNetns, d)
	}
	f := floor{direct: summary.Percentile(direct, 50), trueInNetns: summary.Percentile(inNetns, 50), plugins: map[string]time.Duration{}}
	for _, bin := range s.plugins {
		took := make([]time.Duration, 0, samples)
		for range samples {
			d, err := timeIt(func() error { _, err := s.exec.ExecPlugin(ctx, bin, stdin, env); return err })
			if err != nil {
				return floor{}, fmt.Errorf("exec %s VERSION: %w", bin, err)
			}
			took = append(took, d)
		}
		f.plugins[filepath.Base(bin)] = summary.Percentile(took, 50)
	}
	return f, nil
}
