package main

import (
	"cmp"
	"fmt"
	"github.com/nodenet/nodenet/bench/internal/summary"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
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
		return summary.Median(xs)
	}
	fig := func(label string, maxRatio float64, f func(roundResult) time.Duration) figure {
		return figure{label: label, nodenet: med("nodenet", f), reference: med("reference", f), maxRatio: maxRatio}
	}
	n := r.opts.pods
	return []figure{
		fig("sequential ADD p50", targetSeqAddRatio, func(x roundResult) time.Duration { return summary.Percentile(x.seqAdd, 50) }),
		fig("sequential ADD p99", 0, func(x roundResult) time.Duration { return summary.Percentile(x.seqAdd, 99) }),
		fig("sequential DEL p50", 0, func(x roundResult) time.Duration { return summary.Percentile(x.seqDel, 50) }),
		fig("sequential DEL p99", 0, func(x roundResult) time.Duration { return summary.Percentile(x.seqDel, 99) }),
		fig(fmt.Sprintf("%d concurrent ADDs, all done", n), targetConcAddRatio, func(x roundResult) time.Duration { return x.concAdd }),
		fig(fmt.Sprintf("%d concurrent DELs, all done", n), 0, func(x roundResult) time.Duration { return x.concDel }),
	}
}

// mainTable holds the figures, the ratios and the targets.
func (r *report) mainTable() summary.Table {
	t := summary.Table{Header: []string{"figure (median of rounds)", "nodenet", "reference", "nodenet/reference", "target", "result"}}
	for _, f := range r.figures() {
		ratio := float64(f.nodenet) / float64(f.reference)
		target, result := "", ""
		if f.maxRatio > 0 {
			target = fmt.Sprintf("≤ %.2f", f.maxRatio)
			result = summary.Verdict(ratio <= f.maxRatio)
		}
		t.Rows = append(t.Rows, []string{f.label, summary.Millis(f.nodenet), summary.Millis(f.reference),
			fmt.Sprintf("%.2f (%.1f× faster)", ratio, 1/ratio), target, result})
	}
	worst := slices.MaxFunc(r.memory, func(a, b memory) int { return cmp.Compare(a.rss, b.rss) })
	t.Rows = append(t.Rows, []string{
		fmt.Sprintf("daemon RSS with %d pods (worst round)", r.opts.rssPods), summary.MiB(worst.rss), "no daemon", "",
		"< " + summary.MiB(targetRSS), summary.Verdict(worst.rss < targetRSS),
	})
	return t
}

// breakdownTable says where the time goes: the unavoidable process starts on each side, and
// what the nodenet daemon itself spends per command.
func (r *report) breakdownTable() summary.Table {
	t := summary.Table{Header: []string{"where the time goes", "nodenet", "reference"}}
	trueRow := func(name string) string {
		f := r.floors[name]
		return summary.Millis(f.direct) + " / " + summary.Millis(f.trueInNetns)
	}
	pluginRow := func(name string) string {
		var parts []string
		for bin, d := range r.floors[name].plugins {
			parts = append(parts, bin+" "+summary.Millis(d))
		}
		slices.Sort(parts)
		return strings.Join(parts, ", ")
	}
	t.Rows = append(t.Rows,
		[]string{"fork+exec of /bin/true (p50): direct / in the node netns", trueRow("nodenet"), trueRow("reference")},
		[]string{"fork+exec of each plugin answering VERSION (p50)", pluginRow("nodenet"), pluginRow("reference")},
	)
	daemon := func(ph phase) string {
		var xs []time.Duration
		for _, res := range r.results["nodenet"] {
			xs = append(xs, res.daemon[ph])
		}
		return summary.Millis(summary.Median(xs))
	}
	for _, ph := range []phase{phaseSeqAdd, phaseSeqDel, phaseConcAdd, phaseConcDel} {
		t.Rows = append(t.Rows, []string{"daemon's own time per command, " + string(ph) + " (mean)", daemon(ph), "no daemon"})
	}
	worst := slices.MaxFunc(r.memory, func(a, b memory) int { return cmp.Compare(a.rss, b.rss) })
	peak := slices.MaxFunc(r.memory, func(a, b memory) int { return cmp.Compare(a.hwm, b.hwm) })
	t.Rows = append(t.Rows,
		[]string{fmt.Sprintf("daemon RSS with %d pods: anonymous + file-backed (worst round)", r.opts.rssPods),
			summary.MiB(worst.anon) + " + " + summary.MiB(worst.file), "no daemon"},
		[]string{"daemon peak RSS over the run (VmHWM)", summary.MiB(peak.hwm), "no daemon"})
	return t
}

// roundsTable shows every round, so the spread behind the medians is visible.
func (r *report) roundsTable() summary.Table {
	t := summary.Table{Header: []string{"round", "first", "side", "seq ADD p50", "p99", "seq DEL p50", "p99", "conc ADD", "conc DEL", "RSS"}}
	for i := range r.first {
		for _, name := range []string{"nodenet", "reference"} {
			x := r.results[name][i]
			rss := "—"
			if name == "nodenet" {
				rss = summary.MiB(r.memory[i].rss)
			}
			t.Rows = append(t.Rows, []string{strconv.Itoa(i + 1), r.first[i], name,
				summary.Millis(summary.Percentile(x.seqAdd, 50)), summary.Millis(summary.Percentile(x.seqAdd, 99)),
				summary.Millis(summary.Percentile(x.seqDel, 50)), summary.Millis(summary.Percentile(x.seqDel, 99)),
				summary.Millis(x.concAdd), summary.Millis(x.concDel), rss})
		}
	}
	return t
}

func (r *report) write(w io.Writer) {
	figures, breakdown, rounds := r.mainTable(), r.breakdownTable(), r.roundsTable()
	fmt.Fprintf(w, "\nnodenet vs reference bridge + host-local %s, %d pods, %d rounds\n\n", r.pluginsVersion, r.opts.pods, len(r.first))
	figures.Text(w)
	fmt.Fprintln(w)
	breakdown.Text(w)
	fmt.Fprintln(w)
	rounds.Text(w)

	fmt.Fprint(w, "\n---- markdown ----\n\n")
	fmt.Fprintf(w, "### CNI benchmark: nodenet vs reference bridge + host-local %s\n\n", r.pluginsVersion)
	fmt.Fprintf(w, "- date: %s (run took %s)\n", r.started.Format(time.RFC3339), r.finished.Sub(r.started).Round(time.Second))
	fmt.Fprintf(w, "- machine: %s\n", summary.Machine())
	fmt.Fprintf(w, "- command: `go run ./bench/cni %s`\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(w, "- %d pods per phase, %d rounds alternating which side goes first (first: %s); figures are medians over rounds\n\n",
		r.opts.pods, len(r.first), strings.Join(r.first, ", "))
	figures.Markdown(w)
	fmt.Fprintln(w)
	breakdown.Markdown(w)
	fmt.Fprintln(w)
	rounds.Markdown(w)
}
