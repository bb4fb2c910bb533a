package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// coldResult is one cold start: from starting the process until every benchmark Service's
// ClusterIP is in the proxy's Service map (atomic with the chains it goes to). CPU and memory are
// read opts.settle later.
type coldResult struct {
	took   time.Duration
	stats  procStats                   // the process at that moment
	chains map[netip.AddrPort]chainRef // ClusterIP:port → the Service chain
	polls  int
}

// coldStart removes the proxy's tables, starts it, and polls its Service map until every
// address in want is there. The poll interval is opts.coldPoll, stretched to the last dump's
// own duration so the reader never takes more than half a core; the figure is the end of the
// first poll that found everything, so it is late by at most one interval. With grace > 0, a map
// that does not exist that long after the start is an error (for nodenet: a daemon whose proxy is
// not wired, reported as not available).
func (s *side) coldStart(ctx context.Context, want []netip.AddrPort, opts options, grace time.Duration) (coldResult, error) {
	if err := deleteTables(s.node.NS, s.rules); err != nil {
		return coldResult{}, err
	}
	r, err := newNFTReader(s.node.NS, s.rules)
	if err != nil {
		return coldResult{}, err
	}
	defer r.Close()
	start := time.Now()
	if err := s.proc.Start(); err != nil {
		return coldResult{}, err
	}
	var cpuProfile <-chan error
	if opts.profiles.dir != "" && s.name == sideNodenet {
		cpuProfile = opts.profiles.cpuDuringColdStart(ctx, s, s.profileName)
	}
	deadline := start.Add(opts.syncTimeout)
	polls, have := 0, 0
	var lastErr error
	for {
		if exited, log := s.proc.Exited(); exited {
			return coldResult{}, fmt.Errorf("%s exited during its cold sync:\n%s", s.name, log)
		}
		s.sampleRSS()
		pollStart := time.Now()
		chains, err := r.serviceChains()
		pollTook := time.Since(pollStart)
		polls++
		switch {
		case errors.Is(err, errMissing):
			if grace > 0 && time.Since(start) > grace {
				return coldResult{}, fmt.Errorf("no %s in its node namespace's tables %v after start", s.rules, grace)
			}
		case err != nil:
			lastErr = err
		default:
			have = 0
			for _, a := range want {
				if _, ok := chains[a]; ok {
					have++
				}
			}
			if have == len(want) {
				took := time.Since(start)
				// A proxy's nft child (kube-proxy) counts in its CPU time once reaped, after
				// the kernel has committed its transaction: read a little later.
				if err := sleep(ctx, opts.settle); err != nil {
					return coldResult{}, err
				}
				st, err := readProc(s.proc.PID())
				if err != nil {
					return coldResult{}, err
				}
				if cpuProfile != nil {
					if err := errors.Join(<-cpuProfile, opts.profiles.heap(ctx, s, s.profileName)); err != nil {
						return coldResult{}, fmt.Errorf("profiles: %w", err)
					}
				}
				return coldResult{took: took, stats: st, chains: chains, polls: polls}, nil
			}
		}
		if time.Now().After(deadline) {
			return coldResult{}, fmt.Errorf("%s: %d of %d Services programmed %v after start (last error: %v)",
				s.name, have, len(want), opts.syncTimeout, lastErr)
		}
		if err := sleep(ctx, max(opts.coldPoll, pollTook)); err != nil {
			return coldResult{}, err
		}
	}
}

// changeResult is the endpoint-change phase of one round.
type changeResult struct {
	latencies []time.Duration
	cpu       time.Duration // the process's CPU over the phase (children included), gaps included
	childCPU  time.Duration // the part of cpu spent in child processes
	// reported is the proxy's own mean network programming latency over the phase (seconds,
	// from the trigger-time annotation); NaN when it exports no such metric.
	reported float64
}

// changePhase makes opts.changes single-endpoint changes, one at a time: each replaces one
// endpoint address of a random Service (never one of the connect Services) and is timed from just
// before the API call until the new endpoint is among the targets of that Service's chain in the
// node namespace (chainEndpoints), polled every opts.changePoll (one rule dump of one chain per
// poll; the anonymous map is read only when its rule is new). Changes are opts.changeGap apart,
// longer than kube-proxy's minSyncPeriod (1 s), so no change waits for its rate limiter.
func (s *side) changePhase(ctx context.Context, w *workload, chains map[netip.AddrPort]chainRef, opts options, rng *rand.Rand) (changeResult, error) {
	r, err := newNFTReader(s.node.NS, s.rules)
	if err != nil {
		return changeResult{}, err
	}
	defer r.Close()
	// A labelled histogram appears with its first observation: absent before counts as zero.
	sumBefore, countBefore, _ := s.scrapeHistogram(ctx)
	before, err := readProc(s.proc.PID())
	if err != nil {
		return changeResult{}, err
	}
	var res changeResult
	for i := range opts.changes {
		idx := w.real + rng.IntN(len(w.services)-w.real)
		svc := w.services[idx]
		chain, ok := chains[netip.AddrPortFrom(svc.vip, servicePort)]
		if !ok {
			return res, fmt.Errorf("%s: no chain for %s (%s)", s.name, svc.name, svc.vip)
		}
		start := time.Now()
		addr, err := w.changeEndpoint(ctx, idx, i%endpointsPerService)
		if err != nil {
			return res, err
		}
		var lastErr error
		var seen []target
		for {
			targets, err := r.chainEndpoints(chain)
			if err == nil && hasEndpoint(targets, addr) {
				res.latencies = append(res.latencies, time.Since(start))
				break
			}
			if err != nil {
				lastErr = err
			}
			seen = targets
			if time.Since(start) > opts.syncTimeout {
				return res, fmt.Errorf("%s: endpoint %s of %s not among the targets of chain %v after %v (last error: %v; targets %v)",
					s.name, addr, svc.name, chain, opts.syncTimeout, lastErr, seen)
			}
			if exited, log := s.proc.Exited(); exited {
				return res, fmt.Errorf("%s exited:\n%s", s.name, log)
			}
			if err := sleep(ctx, opts.changePoll); err != nil {
				return res, err
			}
		}
		s.sampleRSS()
		if err := sleep(ctx, opts.changeGap); err != nil {
			return res, err
		}
	}
	after, err := readProc(s.proc.PID())
	if err != nil {
		return res, err
	}
	res.cpu = after.cpu - before.cpu
	res.childCPU = after.childCPU - before.childCPU
	res.reported = math.NaN()
	if sumAfter, countAfter, ok := s.scrapeHistogram(ctx); ok && countAfter > countBefore {
		res.reported = (sumAfter - sumBefore) / (countAfter - countBefore)
	}
	return res, nil
}

// connectResult is the connect-latency phase of one round.
type connectResult struct {
	// vip and direct alternate while the proxy runs: connects to the ClusterIP and straight to
	// a backend, so vip − direct is the Service lookup and DNAT alone.
	vip, direct []time.Duration
	// withTables and bare are direct connects once the proxy has stopped, first with its
	// tables still in place, then without any: withTables − bare is what its hooks cost every
	// new connection, Service or not, measured back to back and with no proxy process running.
	withTables, bare []time.Duration
}

// directConnects times n direct connects to a backend (after a warm-up).
func (s *side) directConnects(n int) ([]time.Duration, error) {
	direct := netip.AddrPortFrom(backendAddrs[0], backendPort)
	if _, err := s.topo.connects([]netip.AddrPort{direct}, 50); err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	ds, err := s.topo.connects([]netip.AddrPort{direct}, n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return ds[0], nil
}

// floorConnects stops the proxy and times direct connects with its tables in place, then
// without them.
func (s *side) floorConnects(c *connectResult, n int) (err error) {
	if err := s.proc.Stop(); err != nil {
		return err
	}
	if c.withTables, err = s.directConnects(n); err != nil {
		return err
	}
	if err := deleteTables(s.node.NS, s.rules); err != nil {
		return err
	}
	c.bare, err = s.directConnects(n)
	return err
}

// connectPhase times opts.connects connects to the first Service's ClusterIP, whose ten
// endpoints are real listeners in the backend namespace, alternating with connects straight to
// one backend address (the floor: the same path without a Service).
func (s *side) connectPhase(ctx context.Context, vip netip.Addr, opts options) (connectResult, error) {
	target := netip.AddrPortFrom(vip, servicePort)
	direct := netip.AddrPortFrom(backendAddrs[0], backendPort)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.topo.reachable(target)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return connectResult{}, fmt.Errorf("%s: %s from the client namespace: %w", s.name, target, err)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return connectResult{}, err
		}
	}
	// Warm-up, not kept: neighbour entries for every backend address, caches.
	if _, err := s.topo.connects([]netip.AddrPort{target, direct}, 50); err != nil {
		return connectResult{}, fmt.Errorf("%s: %w", s.name, err)
	}
	ds, err := s.topo.connects([]netip.AddrPort{target, direct}, opts.connects)
	if err != nil {
		return connectResult{}, fmt.Errorf("%s: %w", s.name, err)
	}
	return connectResult{vip: ds[0], direct: ds[1]}, nil
}

// scrapeHistogram reads the sum and count of the side's network programming histogram from its
// metrics endpoint inside the node namespace; ok is false when it is not exported.
func (s *side) scrapeHistogram(ctx context.Context) (sum, count float64, ok bool) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return s.node.NS.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.metricsAddr+"/metrics", nil)
	if err != nil {
		return 0, 0, false
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, false
	}
	var haveSum, haveCount bool
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, value, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		name, _, _ = strings.Cut(name, "{")
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch name {
		case s.programmingMetric + "_sum":
			sum += v
			haveSum = true
		case s.programmingMetric + "_count":
			count += v
			haveCount = true
		}
	}
	return sum, count, haveSum && haveCount && sc.Err() == nil
}

// procStats are a process's CPU time and memory.
type procStats struct {
	// cpu is user + system time of the process and of its children it has waited for
	// (utime + stime + cutime + cstime): kube-proxy runs the nft command for every sync, and
	// that work is part of its cost.
	cpu, childCPU        time.Duration
	rss, hwm, anon, file int64 // VmRSS, VmHWM, RssAnon, RssFile in bytes
}

// sampleRSS raises s.peakRSS to the process's VmRSS and VmHWM now. VmHWM alone can miss a
// peak: the kernel updates it lazily, mostly when memory is unmapped.
func (s *side) sampleRSS() {
	if st, err := readProc(s.proc.PID()); err == nil {
		s.peakRSS = max(s.peakRSS, st.rss, st.hwm)
	}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every Linux architecture Go
// supports.
const clockTicks = 100

// readProc reads utime and stime from /proc/PID/stat and the memory from /proc/PID/status.
func readProc(pid int) (procStats, error) {
	if pid == 0 {
		return procStats{}, errors.New("process is not running")
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStats{}, err
	}
	// The command name may hold spaces and parentheses; the fields follow the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	fields := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(fields) < 15 {
		return procStats{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	var ticks [4]int64
	for i, f := range fields[11:15] { // utime, stime, cutime, cstime: fields 14-17 of proc(5)
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return procStats{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks[i] = v
	}
	st := procStats{
		cpu:      time.Duration(ticks[0]+ticks[1]+ticks[2]+ticks[3]) * time.Second / clockTicks,
		childCPU: time.Duration(ticks[2]+ticks[3]) * time.Second / clockTicks,
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStats{}, err
	}
	dst := map[string]*int64{"VmRSS": &st.rss, "VmHWM": &st.hwm, "RssAnon": &st.anon, "RssFile": &st.file}
	for line := range strings.Lines(string(status)) {
		key, value, ok := strings.Cut(line, ":")
		p := dst[key]
		if !ok || p == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return procStats{}, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
		*p = kb << 10
	}
	if st.rss == 0 {
		return procStats{}, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
	}
	return st, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
