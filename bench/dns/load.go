package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nodenet/nodenet/e2e/lab"
)

// perfRun is what one dnsperf run reported.
type perfRun struct {
	rate      float64 // the target rate (queries/s); 0 for as fast as the in-flight limit allows
	sent      int
	completed int
	lost      int
	rcodes    map[string]int
	qps       float64         // queries completed per second of the run
	latencies []time.Duration // one per answered query, with verbose
	// sendLag is how far the Go generator fell behind its schedule at worst (dnsperf: 0).
	sendLag time.Duration
	// serverDrops counts the datagrams the server's namespace dropped during the run because a
	// socket's receive buffer was full: lost queries that never reached the server.
	serverDrops int64
}

// maxSendLag is how far the generator may fall behind its schedule before a latency run says so:
// a few of its ticks.
const maxSendLag = 2 * time.Millisecond

// The load generators.
const (
	genGo      = "go"      // gogen.go: open loop at a target rate, batched system calls
	genDNSPerf = "dnsperf" // closed loop: at most --in-flight outstanding, paced by -Q
)

// loadGen runs the load generator from a client namespace against the node-local address, bound
// to the load CPU.
type loadGen struct {
	opts   options
	client *lab.Netns
	server *lab.Netns // whose UDP counters tell where lost queries were dropped
	dir    string     // where its output files go
}

// run sends the queries of file at rate for d (rate 0: as fast as the in-flight limit allows);
// verbose also records every answer's latency.
func (g loadGen) run(ctx context.Context, file string, rate float64, d time.Duration, verbose bool) (perfRun, error) {
	before, err := rcvbufErrors(g.server)
	if err != nil {
		return perfRun{}, err
	}
	var res perfRun
	if g.opts.generator == genDNSPerf {
		res, err = g.dnsperf(ctx, file, rate, d, verbose)
	} else {
		res, err = g.goGen(ctx, file, rate, d, verbose)
	}
	if err != nil {
		return res, err
	}
	after, err := rcvbufErrors(g.server)
	res.serverDrops = after - before
	return res, err
}

// rcvbufErrors is the namespace's count of UDP datagrams dropped because a socket's receive
// buffer was full (Udp RcvbufErrors in /proc/net/snmp, which shows the reader's namespace).
func rcvbufErrors(ns *lab.Netns) (int64, error) {
	out, err := ns.Run("cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	var header []string
	for line := range strings.Lines(out) {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i, name := range header {
			if name == "RcvbufErrors" && i < len(fields) {
				return strconv.ParseInt(fields[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no Udp RcvbufErrors in /proc/net/snmp", ns.Name)
}

// goGen runs this program's own generator (gogen.go) as a child process.
func (g loadGen) goGen(ctx context.Context, file string, rate float64, d time.Duration, verbose bool) (perfRun, error) {
	self, err := os.Executable()
	if err != nil {
		return perfRun{}, err
	}
	args := []string{"netns", "exec", g.client.Name, self, "loadgen", "-server", nodeLocalAddr + ":53", "-file", file,
		"-rate", strconv.FormatFloat(rate, 'f', 0, 64), "-duration", d.String(), "-timeout", g.opts.timeout.String(),
		"-sockets", strconv.Itoa(g.opts.clients), "-in-flight", strconv.Itoa(g.opts.inFlight)}
	if verbose {
		args = append(args, "-latencies")
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := onCPU(g.opts.loadCPU, g.opts.sched, cmd.Start); err != nil {
		return perfRun{}, fmt.Errorf("start the load generator: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return perfRun{}, fmt.Errorf("load generator: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var out genResult
	if err := json.Unmarshal([]byte(stdout.String()), &out); err != nil {
		return perfRun{}, fmt.Errorf("load generator output: %w", err)
	}
	res := perfRun{rate: rate, sent: out.Sent, completed: out.Completed, lost: out.Lost, rcodes: out.Rcodes, qps: out.QPS,
		sendLag: time.Duration(out.MaxSendLag)}
	for _, ns := range out.Latencies {
		res.latencies = append(res.latencies, time.Duration(ns))
	}
	return res, nil
}

// dnsperf runs dnsperf and parses its report.
func (g loadGen) dnsperf(ctx context.Context, file string, rate float64, d time.Duration, verbose bool) (perfRun, error) {
	args := []string{"netns", "exec", g.client.Name, g.opts.dnsperf, "-s", nodeLocalAddr, "-d", file,
		"-c", strconv.Itoa(g.opts.clients), "-q", strconv.Itoa(g.opts.inFlight),
		"-t", strconv.FormatFloat(g.opts.timeout.Seconds(), 'f', -1, 64),
		"-l", strconv.FormatFloat(d.Seconds(), 'f', -1, 64)}
	if rate > 0 {
		args = append(args, "-Q", strconv.Itoa(int(math.Round(rate))))
	}
	if verbose {
		args = append(args, "-v")
	}
	out, err := os.CreateTemp(g.dir, "dnsperf-*.out")
	if err != nil {
		return perfRun{}, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := onCPU(g.opts.loadCPU, g.opts.sched, cmd.Start); err != nil {
		return perfRun{}, fmt.Errorf("start dnsperf: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return perfRun{}, fmt.Errorf("dnsperf: %w: %s", err, lab.Tail(out.Name(), 10))
	}
	res, err := parseDNSPerf(out.Name())
	res.rate = rate
	return res, err
}

// parseDNSPerf reads dnsperf's statistics and, from verbose lines ("> NOERROR name A 0.000123";
// "> T name A" for a timeout), every latency.
func parseDNSPerf(path string) (perfRun, error) {
	f, err := os.Open(path)
	if err != nil {
		return perfRun{}, err
	}
	defer f.Close()
	res := perfRun{rcodes: map[string]int{}}
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "> "); ok {
			fields := strings.Fields(rest)
			if len(fields) == 4 {
				secs, err := strconv.ParseFloat(fields[3], 64)
				if err != nil {
					return res, fmt.Errorf("%s: latency in %q: %w", filepath.Base(path), line, err)
				}
				res.latencies = append(res.latencies, time.Duration(secs*float64(time.Second)))
			}
			continue
		}
		key, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(value)
		if len(fs) == 0 {
			continue
		}
		switch key {
		case "Queries sent":
			res.sent, err = strconv.Atoi(fs[0])
		case "Queries completed":
			res.completed, err = strconv.Atoi(fs[0])
		case "Queries lost":
			res.lost, err = strconv.Atoi(fs[0])
		case "Queries per second":
			res.qps, err = strconv.ParseFloat(fs[0], 64)
		case "Response codes":
			// "NOERROR 3997 (99.90%), NXDOMAIN 4 (0.10%)"
			for part := range strings.SplitSeq(value, ",") {
				fs := strings.Fields(part)
				if len(fs) < 2 {
					continue
				}
				n, perr := strconv.Atoi(fs[1])
				if perr != nil {
					err = perr
					break
				}
				res.rcodes[fs[0]] = n
			}
		default:
			continue
		}
		if err != nil {
			return res, fmt.Errorf("%s: %q: %w", filepath.Base(path), line, err)
		}
		seen[key] = true
	}
	if err := sc.Err(); err != nil {
		return res, err
	}
	for _, key := range []string{"Queries sent", "Queries completed", "Queries lost", "Queries per second"} {
		if !seen[key] {
			return res, fmt.Errorf("dnsperf printed no %q: %s", key, lab.Tail(path, 10))
		}
	}
	return res, nil
}

// clean reports whether a run at its target rate answered every query within the timeout with
// the expected response code, and kept pace (a server that falls behind holds dnsperf back at its
// in-flight limit, so its rate drops without any loss).
func (r perfRun) clean(rcode string) (bool, string) {
	switch {
	case r.lost > 0:
		return false, fmt.Sprintf("%d of %d lost (%d dropped at a full socket buffer in the server's namespace)", r.lost, r.sent, r.serverDrops)
	case r.rcodes[rcode] != r.completed:
		return false, fmt.Sprintf("response codes %v, want all %s", r.rcodes, rcode)
	case r.rate > 0 && r.qps < 0.97*r.rate:
		return false, fmt.Sprintf("%.0f/s, fell behind", r.qps)
	}
	return true, ""
}

// capacity is the outcome of a rate search on one mix.
type capacity struct {
	probe perfRun   // as fast as the in-flight limit allows
	steps []perfRun // every paced step, in order
	best  perfRun   // the highest clean step
	found bool
}

// maxRate finds the highest target rate at which the queries of file are answered cleanly. It
// starts below the unpaced probe's rate, raises the target by 20% while steps pass, then bisects
// between the highest passing and the lowest failing target until they are within
// opts.precision. A failing step is tried again, up to opts.tries in all: other work on the
// shared machine can make a step fail but never pass, so one clean try shows the rate is served.
// logf gets one line per try.
func (g loadGen) maxRate(ctx context.Context, file, rcode string, logf func(string, ...any)) (capacity, error) {
	var c capacity
	var err error
	if c.probe, err = g.run(ctx, file, 0, g.opts.step, false); err != nil {
		return c, err
	}
	logf("    unpaced: %.0f/s, %d lost", c.probe.qps, c.probe.lost)
	pass, fail := 0.0, math.Inf(1)
	rate := math.Max(0.6*c.probe.qps, minRate)
	for {
		if err := pause(ctx); err != nil {
			return c, err
		}
		var res perfRun
		var ok bool
		var why string
		for try := range g.opts.tries {
			if try > 0 {
				logf("    %.0f/s: %s; again", rate, why)
				if err := pause(ctx); err != nil {
					return c, err
				}
			}
			var err error
			if res, err = g.run(ctx, file, rate, g.opts.step, false); err != nil {
				return c, err
			}
			c.steps = append(c.steps, res)
			if ok, why = res.clean(rcode); ok {
				break
			}
		}
		if ok {
			logf("    %.0f/s: clean (%.0f/s answered)", rate, res.qps)
			pass = rate
			if !c.found || res.qps > c.best.qps {
				c.best, c.found = res, true
			}
		} else {
			logf("    %.0f/s: %s", rate, why)
			fail = rate
		}
		switch {
		case math.IsInf(fail, 1):
			rate *= 1.2
		case pass == 0:
			if rate <= minRate {
				return c, nil // not even the lowest rate passes
			}
			rate = math.Max(rate/2, minRate)
		case fail/pass <= g.opts.precision:
			return c, nil
		default:
			rate = math.Sqrt(pass * fail)
		}
	}
}

// latencyAt measures every answer's latency at rate, tried again like a step of the search while
// a try loses queries (up to opts.tries in all); the last try counts.
func (g loadGen) latencyAt(ctx context.Context, file, rcode string, rate float64, logf func(string, ...any)) (perfRun, error) {
	var res perfRun
	for try := range g.opts.tries {
		if err := pause(ctx); err != nil {
			return res, err
		}
		var err error
		if res, err = g.run(ctx, file, rate, g.opts.step, true); err != nil {
			return res, err
		}
		if res.sendLag > maxSendLag {
			logf("    latency at %.0f/s: the generator fell %s behind its schedule at worst, which its queries' latencies include", rate, res.sendLag.Round(time.Microsecond))
		}
		ok, why := res.clean(rcode)
		if ok {
			break
		}
		if try < g.opts.tries-1 {
			logf("    latency at %.0f/s: %s; again", rate, why)
		}
	}
	return res, nil
}

// minRate is the lowest target the search tries.
const minRate = 1000

// pause lets a server drain its queues between steps.
func pause(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Second):
		return nil
	}
}
