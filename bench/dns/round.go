package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nodenet/nodenet/bench/internal/summary"
)

// mixResult is one mix on one side in one round.
type mixResult struct {
	capacity capacity
	half     perfRun // at half the highest clean rate, with every latency
	common   perfRun // at --latency-rate, the same for every side, with every latency
}

// roundResult is what one side measured in one round at one size.
type roundResult struct {
	first string        // the side that went first in this round
	ready time.Duration // start → the first and the last Service name answered
	cpus  string        // the CPUs its threads were allowed on
	warm  memory        // after the warm-up
	end   memory        // after every mix
	mixes map[string]mixResult
}

func (r roundResult) summary() string {
	s := fmt.Sprintf("ready in %s on CPU %s", summary.Millis(r.ready), r.cpus)
	for _, name := range []string{mixCluster, mixSearch, mixExternal} {
		m, ok := r.mixes[name]
		if !ok || !m.capacity.found {
			s += fmt.Sprintf(" | %s: no clean rate", name)
			continue
		}
		s += fmt.Sprintf(" | %s %.0f/s, p50 %s p99 %s", name, m.capacity.best.qps,
			us(summary.Percentile(m.half.latencies, 50)), us(summary.Percentile(m.half.latencies, 99)))
	}
	return s + fmt.Sprintf(" | RSS %s, peak %s", summary.MiB(r.end.rss), summary.MiB(r.end.hwm))
}

// round starts the side afresh bound to the server CPU, waits until it answers the first and the
// last Service name, warms it up, measures every mix and reads its memory; the process is stopped
// at the end, whatever happens.
func (s *side) round(ctx context.Context, w *workload, mixes []*mix, opts options, logf func(string, ...any)) (res roundResult, err error) {
	defer func() { err = errors.Join(err, s.proc.Stop()) }()
	if err := onCPU(opts.serverCPU, opts.sched, s.proc.Start); err != nil {
		return res, err
	}
	last := len(w.vips) - 1
	probes := []query{{serviceFQDN(0), w.vips[0]}, {serviceFQDN(last), w.vips[last]}}
	if res.ready, err = s.waitServing(ctx, probes, opts.grace); err != nil {
		return res, err
	}
	pid := s.proc.PID()
	if res.cpus, err = allowedCPUs(pid); err != nil {
		return res, err
	}
	if err := s.warmUp(ctx, mixes); err != nil {
		return res, err
	}
	if res.warm, err = readMemory(pid); err != nil {
		return res, err
	}
	gen := loadGen{opts: opts, client: s.client, server: s.node.NS, dir: s.node.Dir}
	res.mixes = map[string]mixResult{}
	for _, m := range mixes {
		logf("  %s, %s:", s.name, m.what)
		var mr mixResult
		if mr.capacity, err = gen.maxRate(ctx, m.file, m.rcode, logf); err != nil {
			return res, err
		}
		if mr.capacity.found {
			if mr.half, err = gen.latencyAt(ctx, m.file, m.rcode, mr.capacity.best.rate/2, logf); err != nil {
				return res, err
			}
		}
		if mr.common, err = gen.latencyAt(ctx, m.file, m.rcode, opts.latencyRate, logf); err != nil {
			return res, err
		}
		res.mixes[m.name] = mr
		if exited, log := s.proc.Exited(); exited {
			return res, fmt.Errorf("%s exited under load:\n%s", s.name, log)
		}
	}
	res.end, err = readMemory(pid)
	return res, err
}
