package main

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets of issue 2.
const (
	targetSeqAddRatio  = 0.25     // sequential ADD p50 at most 1/4 of the reference's
	targetConcAddRatio = 0.25     // n concurrent ADDs done in at most 1/4 of the reference's time
	targetRSS          = 40 << 20 // daemon RSS with 110 pods, bytes (strictly under)
)

// report collects a run's measurements and prints them.
type report struct {
	opts              options
	pluginsVersion    string
	started, finished time.Time
	first             []string                 // per round, the side that went first
	results           map[string][]roundResult // by side name, one per round
	memory            []memory                 // nodenet daemon with opts.rssPods pods, one per round
	floors            map[string]floor         // by side name
}

// figure is one line of the main table: the median over rounds of a per-round value.
type figure struct {
	label              string
	nodenet, reference time.Duration
	maxRatio           float64 // target: nodenet/reference at most this; 0 for none
}

func (r *report) figures() []figure {
	med := func(name string, f func(roundResult) time.Duration) time.Duration {
		var xs []time.Duration
		for _, res := range r.results[name] {
			xs = append(xs, f(res))
		}
		return median(xs)
	}
	fig := func(label string, maxRatio float64, f func(roundResult) time.Duration) figure {
		return figure{label: label, nodenet: med("nodenet", f), reference: med("reference", f), maxRatio: maxRatio}
	}
	n := r.opts.pods
	return []figure{
		fig("sequential ADD p50", targetSeqAddRatio, func(x roundResult) time.Duration { return percentile(x.seqAdd, 50) }),
		fig("sequential ADD p99", 0, func(x roundResult) time.Duration { return percentile(x.seqAdd, 99) }),
		fig("sequential DEL p50", 0, func(x roundResult) time.Duration { return percentile(x.seqDel, 50) }),
		fig("sequential DEL p99", 0, func(x roundResult) time.Duration { return percentile(x.seqDel, 99) }),
		fig(fmt.Sprintf("%d concurrent ADDs, all done", n), targetConcAddRatio, func(x roundResult) time.Duration { return x.concAdd }),
		fig(fmt.Sprintf("%d concurrent DELs, all done", n), 0, func(x roundResult) time.Duration { return x.concDel }),
	}
}

// mainTable holds the figures, the ratios and the targets.
func (r *report) mainTable() table {
	t := table{header: []string{"figure (median of rounds)", "nodenet", "reference", "nodenet/reference", "target", "result"}}
	for _, f := range r.figures() {
		ratio := float64(f.nodenet) / float64(f.reference)
		target, result := "", ""
		if f.maxRatio > 0 {
			target = fmt.Sprintf("≤ %.2f", f.maxRatio)
			result = verdict(ratio <= f.maxRatio)
		}
		t.rows = append(t.rows, []string{f.label, ms(f.nodenet), ms(f.reference),
			fmt.Sprintf("%.2f (%.1f× faster)", ratio, 1/ratio), target, result})
	}
	worst := slices.MaxFunc(r.memory, func(a, b memory) int { return cmp.Compare(a.rss, b.rss) })
	t.rows = append(t.rows, []string{
		fmt.Sprintf("daemon RSS with %d pods (worst round)", r.opts.rssPods), mib(worst.rss), "no daemon", "",
		"< " + mib(targetRSS), verdict(worst.rss < targetRSS),
	})
	return t
}

// breakdownTable says where the time goes: the unavoidable process starts on each side, and
// what the nodenet daemon itself spends per command.
func (r *report) breakdownTable() table {
	t := table{header: []string{"where the time goes", "nodenet", "reference"}}
	trueRow := func(name string) string {
		f := r.floors[name]
		return ms(f.direct) + " / " + ms(f.trueInNetns)
	}
	pluginRow := func(name string) string {
		var parts []string
		for bin, d := range r.floors[name].plugins {
			parts = append(parts, bin+" "+ms(d))
		}
		slices.Sort(parts)
		return strings.Join(parts, ", ")
	}
	t.rows = append(t.rows,
		[]string{"fork+exec of /bin/true (p50): direct / in the node netns", trueRow("nodenet"), trueRow("reference")},
		[]string{"fork+exec of each plugin answering VERSION (p50)", pluginRow("nodenet"), pluginRow("reference")},
	)
	daemon := func(ph phase) string {
		var xs []time.Duration
		for _, res := range r.results["nodenet"] {
			xs = append(xs, res.daemon[ph])
		}
		return ms(median(xs))
	}
	for _, ph := range []phase{phaseSeqAdd, phaseSeqDel, phaseConcAdd, phaseConcDel} {
		t.rows = append(t.rows, []string{"daemon's own time per command, " + string(ph) + " (mean)", daemon(ph), "no daemon"})
	}
	worst := slices.MaxFunc(r.memory, func(a, b memory) int { return cmp.Compare(a.rss, b.rss) })
	peak := slices.MaxFunc(r.memory, func(a, b memory) int { return cmp.Compare(a.hwm, b.hwm) })
	t.rows = append(t.rows,
		[]string{fmt.Sprintf("daemon RSS with %d pods: anonymous + file-backed (worst round)", r.opts.rssPods),
			mib(worst.anon) + " + " + mib(worst.file), "no daemon"},
		[]string{"daemon peak RSS over the run (VmHWM)", mib(peak.hwm), "no daemon"})
	return t
}

// roundsTable shows every round, so the spread behind the medians is visible.
func (r *report) roundsTable() table {
	t := table{header: []string{"round", "first", "side", "seq ADD p50", "p99", "seq DEL p50", "p99", "conc ADD", "conc DEL", "RSS"}}
	for i := range r.first {
		for _, name := range []string{"nodenet", "reference"} {
			x := r.results[name][i]
			rss := "—"
			if name == "nodenet" {
				rss = mib(r.memory[i].rss)
			}
			t.rows = append(t.rows, []string{strconv.Itoa(i + 1), r.first[i], name,
				ms(percentile(x.seqAdd, 50)), ms(percentile(x.seqAdd, 99)),
				ms(percentile(x.seqDel, 50)), ms(percentile(x.seqDel, 99)),
				ms(x.concAdd), ms(x.concDel), rss})
		}
	}
	return t
}

func (r *report) write(w io.Writer) {
	figures, breakdown, rounds := r.mainTable(), r.breakdownTable(), r.roundsTable()
	fmt.Fprintf(w, "\nnodenet vs reference bridge + host-local %s, %d pods, %d rounds\n\n", r.pluginsVersion, r.opts.pods, len(r.first))
	figures.text(w)
	fmt.Fprintln(w)
	breakdown.text(w)
	fmt.Fprintln(w)
	rounds.text(w)

	fmt.Fprint(w, "\n---- markdown ----\n\n")
	fmt.Fprintf(w, "### CNI benchmark: nodenet vs reference bridge + host-local %s\n\n", r.pluginsVersion)
	fmt.Fprintf(w, "- date: %s (run took %s)\n", r.started.Format(time.RFC3339), r.finished.Sub(r.started).Round(time.Second))
	fmt.Fprintf(w, "- machine: %s\n", machine())
	fmt.Fprintf(w, "- command: `go run ./bench/cni %s`\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(w, "- %d pods per phase, %d rounds alternating which side goes first (first: %s); figures are medians over rounds\n\n",
		r.opts.pods, len(r.first), strings.Join(r.first, ", "))
	figures.markdown(w)
	fmt.Fprintln(w)
	breakdown.markdown(w)
	fmt.Fprintln(w)
	rounds.markdown(w)
}

func machine() string {
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d CPUs, Linux %s, %s %s/%s", runtime.NumCPU(), kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// table renders the same rows as aligned text and as markdown.
type table struct {
	header []string
	rows   [][]string
}

func (t table) text(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, row := range append([][]string{t.header}, t.rows...) {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

func (t table) markdown(w io.Writer) {
	line := func(cells []string) { fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | ")) }
	line(t.header)
	sep := make([]string, len(t.header))
	for i := range sep {
		sep[i] = "---"
	}
	line(sep)
	for _, row := range t.rows {
		line(row)
	}
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// ms formats a duration in milliseconds below a second and in seconds above.
func ms(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
