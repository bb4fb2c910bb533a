// Package summary holds what the benchmarks share to summarise and print their measurements:
// order statistics, units, the machine line and tables rendered as text and as markdown.
package summary

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Percentile is the nearest-rank percentile p (0 < p ≤ 100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(float64(len(s)) * p / 100))
	return s[min(max(rank, 1), len(s))-1]
}

// Median is the middle of xs (the mean of the two middle values for an even count).
func Median[T int64 | time.Duration | float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Verdict renders whether a target was met.
func Verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// Millis formats a duration in milliseconds below a second and in seconds above.
func Millis(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// MiB formats a byte count.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// Machine describes where the figures were taken: CPUs, kernel, Go, and the load average at the
// time of the call, since on a shared machine the figures mean little without it.
func Machine() string {
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average at the end " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d CPUs, Linux %s, %s %s/%s%s", runtime.NumCPU(), kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH, load)
}

// Table renders the same rows as aligned text and as markdown.
type Table struct {
	Header []string
	Rows   [][]string
}

// Text writes the table with aligned columns, for the terminal.
func (t Table) Text(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, row := range append([][]string{t.Header}, t.Rows...) {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

// Markdown writes the table for bench/RESULTS.md.
func (t Table) Markdown(w io.Writer) {
	line := func(cells []string) { fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | ")) }
	line(t.Header)
	line(slices.Repeat([]string{"---"}, len(t.Header)))
	for _, row := range t.Rows {
		line(row)
	}
}
