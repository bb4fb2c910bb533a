package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nodenet/nodenet/bench/internal/summary"
)

// Targets of issue 5 besides the QPS ratios of the mixes (mix.targetRatio).
const (
	targetP99 = time.Millisecond // nodenet's p99 at half its highest clean rate (strictly under)
	// nearCeiling is the share of the generator's ceiling above which a side's rate says more
	// about dnsperf than about the server.
	nearCeiling = 0.8
)

const notAvailable = "not available"

// report collects a run's measurements and prints them.
type report struct {
	opts              options
	corednsVersion    string
	code              string // git describe of the tree nodenet was built from
	started, finished time.Time
	ceiling           capacity
	floor             perfRun                          // the trivial responder at --latency-rate
	created           map[int]time.Duration            // by size: time to create the Services added
	results           map[string]map[int][]roundResult // by side, then size: one per round
	unavailable       [][2]string                      // side, reason
	upstreamQueries   int64
	mixes             []*mix // of the last size, for their descriptions and targets
}

func (r *report) add(side string, size int, res roundResult) {
	if r.results[side] == nil {
		r.results[side] = map[int][]roundResult{}
	}
	r.results[side][size] = append(r.results[side][size], res)
}

// value is one cell: a figure, or nothing when the side has no measurement.
type value struct {
	v  float64
	ok bool
}

// over is the median over rounds of f at size for side.
func (r *report) over(side string, size int, f func(roundResult) (float64, bool)) value {
	var xs []float64
	for _, res := range r.results[side][size] {
		if x, ok := f(res); ok {
			xs = append(xs, x)
		}
	}
	if len(xs) == 0 {
		return value{}
	}
	return value{summary.Median(xs), true}
}

// row is one line of the main table.
type row struct {
	label            string
	nodenet, coredns value
	format           func(float64) string
	target           string // "" for none
	pass             func(nodenet, coredns value) (ok, known bool)
}

func (r *report) rows() []row {
	both := func(label string, size int, f func(roundResult) (float64, bool), format func(float64) string) row {
		return row{label: label, nodenet: r.over(sideNodenet, size, f), coredns: r.over(sideCoreDNS, size, f), format: format}
	}
	qps := func(name string) func(roundResult) (float64, bool) {
		return func(x roundResult) (float64, bool) {
			m, ok := x.mixes[name]
			return m.capacity.best.qps, ok && m.capacity.found
		}
	}
	half := func(m mixResult) perfRun { return m.half }
	common := func(m mixResult) perfRun { return m.common }
	latency := func(name string, p float64, run func(mixResult) perfRun) func(roundResult) (float64, bool) {
		return func(x roundResult) (float64, bool) {
			m, ok := x.mixes[name]
			if !ok || len(run(m).latencies) == 0 {
				return 0, false
			}
			return float64(summary.Percentile(run(m).latencies, p)), true
		}
	}
	fqps := func(v float64) string { return fmt.Sprintf("%.0f/s", v) }
	fus := func(v float64) string { return us(time.Duration(v)) }
	fmib := func(v float64) string { return summary.MiB(int64(v)) }

	var rows []row
	for _, size := range r.opts.scales {
		for _, m := range r.mixes {
			x := both(fmt.Sprintf("%d Services, %s: max QPS with no loss", size, m.what), size, qps(m.name), fqps)
			if m.targetRatio > 0 {
				limit := m.targetRatio
				x.target = fmt.Sprintf("≥ %g×", limit)
				x.pass = func(n, c value) (bool, bool) {
					if !n.ok || !c.ok {
						return false, false
					}
					return n.v >= limit*c.v, true
				}
			}
			rows = append(rows, x)
			for _, p := range []float64{50, 99} {
				y := both(fmt.Sprintf("  p%.0f at half that rate", p), size, latency(m.name, p, half), fus)
				if p == 99 {
					y.target = "nodenet < " + summary.Millis(targetP99)
					y.pass = func(n, _ value) (bool, bool) { return n.v < float64(targetP99), n.ok }
				}
				rows = append(rows, y)
			}
			for _, p := range []float64{50, 99} {
				rows = append(rows, both(fmt.Sprintf("  p%.0f at %.0f/s, both (trivial responder: %s)", p, r.opts.latencyRate,
					us(summary.Percentile(r.floor.latencies, p))), size, latency(m.name, p, common), fus))
			}
		}
	}
	for _, size := range r.opts.scales {
		rows = append(rows, both(fmt.Sprintf("%d Services: start → Service names answered", size), size,
			func(x roundResult) (float64, bool) { return float64(x.ready), true }, func(v float64) string { return summary.Millis(time.Duration(v)) }))
	}
	for _, size := range r.opts.scales {
		less := func(n, c value) (bool, bool) { return n.v < c.v, n.ok && c.ok }
		warm := both(fmt.Sprintf("%d Services: RSS after the warm-up", size), size,
			func(x roundResult) (float64, bool) { return float64(x.warm.rss), true }, fmib)
		end := both(fmt.Sprintf("%d Services: RSS after the load", size), size,
			func(x roundResult) (float64, bool) { return float64(x.end.rss), true }, fmib)
		peak := both(fmt.Sprintf("%d Services: peak RSS (VmHWM)", size), size,
			func(x roundResult) (float64, bool) { return float64(x.end.hwm), true }, fmib)
		if size == r.opts.scales[len(r.opts.scales)-1] {
			for _, x := range []*row{&warm, &end, &peak} {
				x.target, x.pass = "nodenet < CoreDNS", less
			}
		}
		rows = append(rows, warm, end, peak)
	}
	return rows
}

func (r *report) mainTable() summary.Table {
	t := summary.Table{Header: []string{"figure (median of rounds)", "nodenet", "CoreDNS", "nodenet/CoreDNS", "target", "result"}}
	cell := func(side string, v value, format func(float64) string) string {
		switch {
		case v.ok:
			return format(v.v)
		case r.isUnavailable(side):
			return notAvailable
		}
		return "—"
	}
	for _, x := range r.rows() {
		ratio := ""
		if x.nodenet.ok && x.coredns.ok && x.coredns.v > 0 {
			ratio = fmt.Sprintf("%.2f×", x.nodenet.v/x.coredns.v)
		}
		result := ""
		if x.pass != nil {
			if ok, known := x.pass(x.nodenet, x.coredns); known {
				result = summary.Verdict(ok)
			}
		}
		t.Rows = append(t.Rows, []string{x.label, cell(sideNodenet, x.nodenet, x.format), cell(sideCoreDNS, x.coredns, x.format), ratio, x.target, result})
	}
	return t
}

func (r *report) isUnavailable(side string) bool {
	for _, u := range r.unavailable {
		if u[0] == side {
			return true
		}
	}
	return false
}

// roundsTable shows every round, so the spread behind the medians is visible.
func (r *report) roundsTable() summary.Table {
	t := summary.Table{Header: []string{"Services", "round", "first", "side", "CPUs", "ready"}}
	for _, m := range r.mixes {
		t.Header = append(t.Header, m.name+": max QPS (unpaced)", "half: p50 / p99 / lost (generator lag)", fmt.Sprintf("%.0f/s: p50 / p99 / lost (generator lag)", r.opts.latencyRate))
	}
	t.Header = append(t.Header, "RSS warm / after / peak")
	for _, size := range r.opts.scales {
		for i := range r.opts.rounds {
			for _, side := range []string{sideNodenet, sideCoreDNS} {
				rs := r.results[side][size]
				if i >= len(rs) {
					continue
				}
				x := rs[i]
				cells := []string{strconv.Itoa(size), strconv.Itoa(i + 1), x.first, side, x.cpus, summary.Millis(x.ready)}
				for _, m := range r.mixes {
					mr := x.mixes[m.name]
					c := mr.capacity
					best := "none"
					if c.found {
						best = fmt.Sprintf("%.0f", c.best.qps)
					}
					cells = append(cells, fmt.Sprintf("%s (%.0f)", best, c.probe.qps))
					cells = append(cells, latencyCell(mr.half), latencyCell(mr.common))
				}
				cells = append(cells, fmt.Sprintf("%s / %s / %s", summary.MiB(x.warm.rss), summary.MiB(x.end.rss), summary.MiB(x.end.hwm)))
				t.Rows = append(t.Rows, cells)
			}
		}
	}
	return t
}

func (r *report) write(w io.Writer) {
	main, rounds := r.mainTable(), r.roundsTable()
	title := fmt.Sprintf("nodenet DNS vs %s (NodeLocal DNSCache + kubernetes plugin), %s Services, %d round(s)",
		r.corednsVersion, joinInts(r.opts.scales), r.opts.rounds)
	fmt.Fprintf(w, "\n%s\n\n", title)
	main.Text(w)
	fmt.Fprintln(w)
	rounds.Text(w)
	r.notes(w)

	fmt.Fprint(w, "\n---- markdown ----\n\n")
	fmt.Fprintf(w, "### Node-local DNS benchmark: %s\n\n", title)
	fmt.Fprintf(w, "- date: %s (run took %s)\n", r.started.Format(time.RFC3339), r.finished.Sub(r.started).Round(time.Second))
	fmt.Fprintf(w, "- machine: %s\n", summary.Machine())
	fmt.Fprintf(w, "- code measured: %s\n", r.code)
	fmt.Fprintf(w, "- command: `go run ./bench/dns %s`\n", strings.Join(os.Args[1:], " "))
	var created []string
	for _, size := range r.opts.scales {
		created = append(created, fmt.Sprintf("%d in %s", size, r.created[size].Round(time.Millisecond)))
	}
	fmt.Fprintf(w, "- Services created (cumulative sizes, each with one named port and an EndpointSlice): %s\n", strings.Join(created, ", "))
	load := fmt.Sprintf("the Go generator (open loop, %d sockets)", r.opts.clients)
	if r.opts.generator == genDNSPerf {
		load = fmt.Sprintf("dnsperf -c %d -q %d", r.opts.clients, r.opts.inFlight)
	}
	fmt.Fprintf(w, "- servers bound to CPU %d, %s to CPU %d, both %s; a query unanswered after %s is lost; steps of %s, up to %d tries each; rate search precision %.0f%%\n\n",
		r.opts.serverCPU, load, r.opts.loadCPU, r.opts.sched, r.opts.timeout, r.opts.step, r.opts.tries, (r.opts.precision-1)*100)
	main.Markdown(w)
	fmt.Fprintln(w)
	rounds.Markdown(w)
	r.notes(w)
}

func (r *report) notes(w io.Writer) {
	c := r.ceiling
	if c.found {
		fmt.Fprintf(w, "\nLoad generator ceiling: %.0f queries/s with no loss (unpaced %.0f/s) against a trivial responder bound to CPU %d; at %.0f/s it answered with p50 %s, p99 %s (%d lost).\n",
			c.best.qps, c.probe.qps, r.opts.serverCPU, r.opts.latencyRate, us(summary.Percentile(r.floor.latencies, 50)),
			us(summary.Percentile(r.floor.latencies, 99)), r.floor.lost)
		for _, side := range []string{sideNodenet, sideCoreDNS} {
			for _, size := range r.opts.scales {
				for _, m := range r.mixes {
					v := r.over(side, size, func(x roundResult) (float64, bool) {
						mr, ok := x.mixes[m.name]
						return mr.capacity.best.qps, ok && mr.capacity.found
					})
					if v.ok && v.v > nearCeiling*c.best.qps {
						fmt.Fprintf(w, "  %s at %d Services, %s: %.0f/s is within %.0f%% of that ceiling, a lower bound of the server's rate.\n",
							side, size, m.name, v.v, (1-nearCeiling)*100)
					}
				}
			}
		}
	} else {
		fmt.Fprintln(w, "\nLoad generator ceiling: no clean rate even against the trivial responder; the figures above are not meaningful.")
	}
	fmt.Fprintf(w, "The upstream answered %d queries over the whole run (warm-ups and cache expiries).\n", r.upstreamQueries)
	for _, u := range r.unavailable {
		fmt.Fprintf(w, "\n%s was not available: %s\n", u[0], u[1])
	}
}

func joinInts(xs []int) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.Itoa(x))
	}
	return strings.Join(s, "/")
}

// us formats a short latency in microseconds.
func us(d time.Duration) string {
	v := math.Round(float64(d) / float64(time.Microsecond))
	if v == 0 {
		v = 0 // no "-0"
	}
	return fmt.Sprintf("%.0f µs", v)
}

// latencyCell shows a latency run's p50, p99 and lost queries, and how far the generator fell
// behind its schedule when that was more than maxSendLag: a tail that may be the generator's.
func latencyCell(run perfRun) string {
	if len(run.latencies) == 0 {
		return ""
	}
	cell := fmt.Sprintf("%s / %s / %d", us(summary.Percentile(run.latencies, 50)), us(summary.Percentile(run.latencies, 99)), run.lost)
	if run.sendLag > maxSendLag {
		cell += fmt.Sprintf(" (%s)", summary.Millis(run.sendLag))
	}
	return cell
}
