package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nodenet/nodenet/bench/internal/summary"
)

// Targets of issue 4.
const (
	targetRatio         = 0.10                  // cold start and per-change latency: nodenet/kube-proxy at most this
	targetChangeP99     = 50 * time.Millisecond // nodenet's p99 per change at the largest size (strictly under)
	targetRSS           = 100 << 20             // nodenet's peak RSS at the largest size, bytes (strictly under)
	targetConnectGrowth = 1.10                  // nodenet's connect p50 at the largest size / at the smallest
)

const notAvailable = "not available"

// report collects a run's measurements and prints them.
type report struct {
	opts              options
	kubeProxyVersion  string
	code              string // git describe of the tree nodenet was built from
	started, finished time.Time
	sizes             []int
	created           map[int]time.Duration            // by size: time to create the Services added
	floors            map[int][]time.Duration          // by size: the list floor of each round (floor.go)
	results           map[string]map[int][]roundResult // by side, then size: one per round
	unavailable       [][2]string                      // side, reason
}

func (r *report) add(side string, size int, res roundResult) {
	if r.results[side] == nil {
		r.results[side] = map[int][]roundResult{}
	}
	r.results[side][size] = append(r.results[side][size], res)
}

func (r *report) smallest() int { return r.sizes[0] }
func (r *report) largest() int  { return r.sizes[len(r.sizes)-1] }

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

// pooled applies f to every round's samples at size together.
func (r *report) pooled(side string, size int, samples func(roundResult) []time.Duration, f func([]time.Duration) float64) value {
	var all []time.Duration
	for _, res := range r.results[side][size] {
		all = append(all, samples(res)...)
	}
	if len(all) == 0 {
		return value{}
	}
	return value{f(all), true}
}

// row is one line of the main table.
type row struct {
	label              string
	nodenet, kubeProxy value
	format             func(float64) string
	ratio              bool   // show nodenet/kube-proxy
	target             string // "" for none
	pass               func(nodenet, kubeProxy value) (bool, bool)
}

func (r *report) rows() []row {
	dur := func(f func(roundResult) (time.Duration, bool)) func(roundResult) (float64, bool) {
		return func(x roundResult) (float64, bool) {
			d, ok := f(x)
			return float64(d), ok
		}
	}
	ratioAtMost := func(limit float64) func(n, k value) (bool, bool) {
		return func(n, k value) (bool, bool) {
			if !n.ok || !k.ok {
				return false, false
			}
			return n.v/k.v <= limit, true
		}
	}
	both := func(label string, size int, f func(roundResult) (float64, bool), format func(float64) string) row {
		return row{label: label, nodenet: r.over(sideNodenet, size, f), kubeProxy: r.over(sideKubeProxy, size, f), format: format, ratio: true}
	}
	fdur := func(v float64) string { return summary.Millis(time.Duration(v)) }
	fsecs := func(v float64) string { return secs(time.Duration(v)) }
	fmib := func(v float64) string { return summary.MiB(int64(v)) }
	fus := func(v float64) string { return us(time.Duration(v)) }

	var rows []row
	for _, size := range r.opts.scales {
		x := both(fmt.Sprintf("cold start, %d Services: start → all programmed", size), size,
			dur(func(x roundResult) (time.Duration, bool) { return x.cold.took, true }), fdur)
		x.target, x.pass = fmt.Sprintf("≤ %.2f", targetRatio), ratioAtMost(targetRatio)
		rows = append(rows, x)
	}
	big := r.largest()
	changes := func(x roundResult) []time.Duration {
		if x.change == nil {
			return nil
		}
		return x.change.latencies
	}
	for _, p := range []float64{50, 99} {
		pct := func(ds []time.Duration) float64 { return float64(summary.Percentile(ds, p)) }
		x := row{label: fmt.Sprintf("endpoint change at %d Services, p%.0f (all rounds)", big, p),
			nodenet: r.pooled(sideNodenet, big, changes, pct), kubeProxy: r.pooled(sideKubeProxy, big, changes, pct),
			format: fdur, ratio: true, target: fmt.Sprintf("≤ %.2f", targetRatio), pass: ratioAtMost(targetRatio)}
		if p == 99 {
			x.target = fmt.Sprintf("≤ %.2f, nodenet < %s", targetRatio, summary.Millis(targetChangeP99))
			x.pass = func(n, k value) (bool, bool) {
				ok, known := ratioAtMost(targetRatio)(n, k)
				return ok && n.v < float64(targetChangeP99), known
			}
		}
		rows = append(rows, x)
	}
	reported := func(x roundResult) (float64, bool) {
		if x.change == nil || math.IsNaN(x.change.reported) {
			return 0, false
		}
		return x.change.reported * float64(time.Second), true
	}
	rows = append(rows, both("  the same, as the proxy's own metric reports it (mean from the trigger time)", big, reported, fdur))
	for _, size := range r.opts.scales {
		rows = append(rows, both(fmt.Sprintf("CPU time of the cold start, %d Services", size), size,
			dur(func(x roundResult) (time.Duration, bool) { return x.cold.stats.cpu, true }), fsecs))
	}
	rows = append(rows, both(fmt.Sprintf("CPU time per endpoint change at %d Services (mean, pauses included)", big), big,
		dur(func(x roundResult) (time.Duration, bool) {
			if x.change == nil {
				return 0, false
			}
			return x.change.cpu / time.Duration(len(x.change.latencies)), true
		}), fdur))
	for _, size := range r.opts.scales {
		rows = append(rows, both(fmt.Sprintf("RSS after the cold start, %d Services", size), size,
			func(x roundResult) (float64, bool) { return float64(x.cold.stats.rss), true }, fmib))
	}
	peak := both(fmt.Sprintf("peak RSS over a round at %d Services (VmHWM and sampled VmRSS)", big), big,
		func(x roundResult) (float64, bool) { return float64(x.peakRSS), true }, fmib)
	peak.target = "nodenet < " + summary.MiB(targetRSS)
	peak.pass = func(n, _ value) (bool, bool) { return n.ok && n.v < targetRSS, n.ok }
	rows = append(rows, peak)

	// Connect latency: p50 per round, median over rounds.
	p50 := func(samples func(*connectResult) []time.Duration) func(roundResult) (float64, bool) {
		return func(x roundResult) (float64, bool) {
			if x.connect == nil || len(samples(x.connect)) == 0 {
				return 0, false
			}
			return float64(summary.Percentile(samples(x.connect), 50)), true
		}
	}
	diff := func(a, b func(*connectResult) []time.Duration) func(roundResult) (float64, bool) {
		return func(x roundResult) (float64, bool) {
			if x.connect == nil || len(a(x.connect)) == 0 || len(b(x.connect)) == 0 {
				return 0, false
			}
			return float64(summary.Percentile(a(x.connect), 50) - summary.Percentile(b(x.connect), 50)), true
		}
	}
	vip := func(c *connectResult) []time.Duration { return c.vip }
	direct := func(c *connectResult) []time.Duration { return c.direct }
	bare := func(c *connectResult) []time.Duration { return c.bare }
	small := r.smallest()
	for _, size := range []int{small, big} {
		rows = append(rows, both(fmt.Sprintf("connect p50 through a ClusterIP, %d Services", size), size, p50(vip), fus))
	}
	growth := func(side string) value {
		a, b := r.over(side, small, p50(vip)), r.over(side, big, p50(vip))
		if !a.ok || !b.ok {
			return value{}
		}
		return value{b.v / a.v, true}
	}
	g := row{label: fmt.Sprintf("  connect p50 at %d / at %d Services", big, small), nodenet: growth(sideNodenet), kubeProxy: growth(sideKubeProxy),
		format: func(v float64) string { return fmt.Sprintf("%.2f", v) }, target: fmt.Sprintf("nodenet ≤ %.2f", targetConnectGrowth)}
	g.pass = func(n, _ value) (bool, bool) { return n.ok && n.v <= targetConnectGrowth, n.ok }
	rows = append(rows, g)
	withTables := func(c *connectResult) []time.Duration { return c.withTables }
	for _, size := range []int{small, big} {
		for _, x := range []row{
			both(fmt.Sprintf("  ClusterIP − direct, %d Services: the Service lookup and DNAT", size), size, diff(vip, direct), fus),
			both(fmt.Sprintf("  proxy stopped: direct with its tables − without, %d Services: its hooks, for every new connection", size), size, diff(withTables, bare), fus),
			both(fmt.Sprintf("  floor: direct without any proxy tables, %d Services", size), size, p50(bare), fus),
		} {
			x.ratio = false
			rows = append(rows, x)
		}
	}
	return rows
}

func (r *report) mainTable() summary.Table {
	t := summary.Table{Header: []string{"figure (median of rounds)", "nodenet", "kube-proxy", "nodenet/kube-proxy", "target", "result"}}
	for _, x := range r.rows() {
		ratio := ""
		if x.ratio && x.nodenet.ok && x.kubeProxy.ok {
			q := x.nodenet.v / x.kubeProxy.v
			ratio = fmt.Sprintf("%.3g", q)
			if q < 1 {
				ratio += fmt.Sprintf(" (%.1f× less)", 1/q)
			}
		}
		result := ""
		if x.pass != nil {
			if ok, known := x.pass(x.nodenet, x.kubeProxy); known {
				result = summary.Verdict(ok)
			}
		}
		t.Rows = append(t.Rows, []string{x.label, r.cell(sideNodenet, x.nodenet, x.format), r.cell(sideKubeProxy, x.kubeProxy, x.format), ratio, x.target, result})
	}
	return t
}

// floorTable puts the cold starts beside what no proxy can beat: the list floor, exec → the
// Services and EndpointSlices received (floor.go). Where the floor alone is above the target
// share of kube-proxy's cold start, no proxy reaches the target on this machine and API server.
func (r *report) floorTable() summary.Table {
	t := summary.Table{Header: []string{"Services", "list floor (median, min–max)", fmt.Sprintf("kube-proxy cold start × %.2f (the target)", targetRatio), "nodenet cold start", "nodenet − floor"}}
	cold := func(x roundResult) (float64, bool) { return float64(x.cold.took), true }
	for _, size := range r.sizes {
		fs := r.floors[size]
		if len(fs) == 0 {
			continue
		}
		floor := summary.Median(fs)
		kp, nn := r.over(sideKubeProxy, size, cold), r.over(sideNodenet, size, cold)
		target, own := "—", "—"
		if kp.ok {
			target = summary.Millis(time.Duration(kp.v * targetRatio))
		}
		if nn.ok {
			own = summary.Millis(time.Duration(nn.v) - floor)
		}
		t.Rows = append(t.Rows, []string{strconv.Itoa(size),
			fmt.Sprintf("%s (%s–%s)", summary.Millis(floor), summary.Millis(slices.Min(fs)), summary.Millis(slices.Max(fs))),
			target, r.cell(sideNodenet, nn, func(v float64) string { return summary.Millis(time.Duration(v)) }), own})
	}
	return t
}

// cell is one side's figure, or why there is none.
func (r *report) cell(side string, v value, format func(float64) string) string {
	switch {
	case v.ok:
		return format(v.v)
	case r.isUnavailable(side):
		return notAvailable
	}
	return "—"
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
	t := summary.Table{Header: []string{"Services", "round", "first", "side", "cold start", "CPU", "RSS", "connect p50: ClusterIP / direct; stopped: with tables / without", "change p50", "p99", "CPU/change", "peak RSS"}}
	for _, size := range r.sizes {
		for i := range r.opts.rounds {
			for _, side := range []string{sideNodenet, sideKubeProxy} {
				rs := r.results[side][size]
				if i >= len(rs) {
					continue
				}
				x := rs[i]
				conn, p50, p99, cpu := "", "", "", ""
				coldCPU := secs(x.cold.stats.cpu)
				if x.cold.stats.childCPU > 0 {
					coldCPU += " (children " + secs(x.cold.stats.childCPU) + ")"
				}
				if c := x.connect; c != nil {
					conn = fmt.Sprintf("%s / %s; %s / %s", us(summary.Percentile(c.vip, 50)), us(summary.Percentile(c.direct, 50)),
						us(summary.Percentile(c.withTables, 50)), us(summary.Percentile(c.bare, 50)))
				}
				if c := x.change; c != nil {
					p50, p99 = summary.Millis(summary.Percentile(c.latencies, 50)), summary.Millis(summary.Percentile(c.latencies, 99))
					cpu = summary.Millis(c.cpu / time.Duration(len(c.latencies)))
					if c.childCPU > 0 {
						cpu += " (children " + summary.Millis(c.childCPU/time.Duration(len(c.latencies))) + ")"
					}
				}
				t.Rows = append(t.Rows, []string{strconv.Itoa(size), strconv.Itoa(i + 1), x.first, side,
					summary.Millis(x.cold.took), coldCPU, summary.MiB(x.cold.stats.rss), conn, p50, p99, cpu, summary.MiB(x.peakRSS)})
			}
		}
	}
	return t
}

func (r *report) write(w io.Writer) {
	main, floor, rounds := r.mainTable(), r.floorTable(), r.roundsTable()
	title := fmt.Sprintf("nodenet proxy vs kube-proxy %s --proxy-mode=nftables, %s Services × %d endpoints, %d rounds",
		r.kubeProxyVersion, joinInts(r.sizes), endpointsPerService, r.opts.rounds)
	fmt.Fprintf(w, "\n%s\n\n", title)
	main.Text(w)
	fmt.Fprintln(w)
	floor.Text(w)
	fmt.Fprintln(w)
	rounds.Text(w)
	r.notes(w)

	fmt.Fprint(w, "\n---- markdown ----\n\n")
	fmt.Fprintf(w, "### Service proxy benchmark: %s\n\n", title)
	fmt.Fprintf(w, "- date: %s (run took %s)\n", r.started.Format(time.RFC3339), r.finished.Sub(r.started).Round(time.Second))
	fmt.Fprintf(w, "- machine: %s\n", summary.Machine())
	fmt.Fprintf(w, "- code measured: %s\n", r.code)
	fmt.Fprintf(w, "- command: `go run ./bench/proxy %s`\n", strings.Join(os.Args[1:], " "))
	var created []string
	for _, size := range r.sizes {
		created = append(created, fmt.Sprintf("%d in %s", size, r.created[size].Round(time.Millisecond)))
	}
	fmt.Fprintf(w, "- Services created (cumulative sizes, each with its EndpointSlice): %s\n", strings.Join(created, ", "))
	if r.opts.nodenetMemoryLimit != "" {
		fmt.Fprintf(w, "- nodenet's daemon ran with GOMEMLIMIT=%s\n", r.opts.nodenetMemoryLimit)
	}
	fmt.Fprintf(w, "- %d changes per round at %d Services, %s apart; %d connects per round and target\n\n",
		r.opts.changes, r.largest(), r.opts.changeGap, r.opts.connects)
	main.Markdown(w)
	fmt.Fprintln(w)
	floor.Markdown(w)
	fmt.Fprintln(w)
	rounds.Markdown(w)
	r.notes(w)
}

func (r *report) notes(w io.Writer) {
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

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
