// Command cni benchmarks pod network setup and teardown: nodenet (a lab node running the daemon,
// driven through libcni with the conflist the daemon wrote) against the reference bridge +
// host-local plugins (built from github.com/containernetworking/plugins at the version the tools
// module pins, driven by the same libcni in a second lab node), side by side in one run.
//
// Each round times, per side, 100 sequential ADDs and then DELs (p50/p99 latency) and 100
// concurrent ADDs and then DELs (wall time until all are done); rounds alternate which side goes
// first, and the report shows the median over rounds with the nodenet/reference ratio and the
// targets of issue 2. It needs root for the network namespaces; everything it creates is removed
// on exit. A missed target is reported, not an error: the exit status is non-zero only when the
// benchmark could not run.
//
//	go run ./bench/cni --bin bin
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nodenet/nodenet/bench/internal/harness"
	"github.com/nodenet/nodenet/bench/internal/summary"
	"github.com/nodenet/nodenet/e2e/lab"
)

type options struct {
	bin          string // directory holding nodenet and nodenet-cni
	tools        string // the tools module that pins the reference plugins
	rounds       int
	pods         int // pods per timed phase
	rssPods      int // pods held while the daemon's RSS is read
	floorSamples int // execs per binary for the process-start floor
}

func main() { os.Exit(benchMain()) }

func benchMain() int {
	var opts options
	flag.StringVar(&opts.bin, "bin", "bin", "directory holding nodenet and nodenet-cni (make build)")
	flag.StringVar(&opts.tools, "tools", "hack/tools", "tools module whose go.mod pins github.com/containernetworking/plugins")
	flag.IntVar(&opts.rounds, "rounds", 3, "rounds; each runs every phase on both sides, alternating which goes first")
	flag.IntVar(&opts.pods, "pods", 100, "pods per phase (sequential and concurrent)")
	flag.IntVar(&opts.rssPods, "rss-pods", 110, "pods networked while the daemon's RSS is read")
	flag.IntVar(&opts.floorSamples, "floor-samples", 30, "execs per binary when timing the process-start floor")
	flag.Parse()
	if opts.rounds < 1 || opts.pods < 1 || opts.rssPods < 1 || opts.floorSamples < 1 {
		fmt.Fprintln(os.Stderr, "bench/cni: --rounds, --pods, --rss-pods and --floor-samples must be at least 1")
		return 2
	}
	return harness.Main("bench/cni", "bench", func(ctx context.Context) error {
		return run(ctx, opts, os.Stdout, os.Stderr)
	})
}

// run sets up both sides, measures, and writes the report to out; progress goes to progress.
func run(ctx context.Context, opts options, out, progress io.Writer) (err error) {
	started := time.Now()
	logf := harness.Progress(progress)
	binDir, err := harness.Binaries(opts.bin)
	if err != nil {
		return err
	}
	pluginDir, pluginsVersion, err := ensureReferencePlugins(ctx, opts.tools, progress)
	if err != nil {
		return err
	}

	l, err := lab.New(binDir, fmt.Sprintf("nb%d", os.Getpid()%10000))
	if err != nil {
		return err
	}
	var sides []*side
	defer func() {
		logf("removing the lab (namespaces, daemon, files)")
		for _, s := range sides {
			err = errors.Join(err, s.close())
		}
		err = errors.Join(err, l.Close())
	}()

	logf("starting the nodenet node")
	nn, err := newNodenetSide(ctx, l)
	if err != nil {
		return err
	}
	sides = append(sides, nn)
	ref, err := newReferenceSide(l, pluginDir, nn.list.CNIVersion)
	if err != nil {
		return err
	}
	sides = append(sides, ref)
	logf("creating %d + %d pod namespaces (not timed)", max(opts.pods, opts.rssPods), opts.pods)
	if nn.pods, err = newPods(l, "a", max(opts.pods, opts.rssPods)); err != nil {
		return err
	}
	if ref.pods, err = newPods(l, "b", opts.pods); err != nil {
		return err
	}

	// Warm-up, not timed: page cache, the first exec of each binary, and the reference bridge
	// and nftables table, which its first ADD creates (nodenet's exist once the daemon is ready).
	floors := map[string]floor{}
	for _, s := range sides {
		if err := s.add(ctx, s.pods[0]); err != nil {
			return fmt.Errorf("%s warm-up ADD: %w", s.name, err)
		}
		if err := s.del(ctx, s.pods[0]); err != nil {
			return fmt.Errorf("%s warm-up DEL: %w", s.name, err)
		}
		if floors[s.name], err = s.execFloor(ctx, opts.floorSamples); err != nil {
			return err
		}
	}

	rep := report{opts: opts, pluginsVersion: pluginsVersion, results: map[string][]roundResult{}, floors: floors, started: started.UTC()}
	for r := range opts.rounds {
		order := []*side{nn, ref}
		if r%2 == 1 {
			order = []*side{ref, nn}
		}
		rep.first = append(rep.first, order[0].name)
		for _, s := range order {
			logf("round %d/%d: %s", r+1, opts.rounds, s.name)
			res, err := s.round(ctx, opts.pods)
			if err != nil {
				return err
			}
			rep.results[s.name] = append(rep.results[s.name], res)
			logf("  seq ADD p50 %s p99 %s | seq DEL p50 %s p99 %s | %d conc ADD %s, DEL %s",
				summary.Millis(summary.Percentile(res.seqAdd, 50)), summary.Millis(summary.Percentile(res.seqAdd, 99)),
				summary.Millis(summary.Percentile(res.seqDel, 50)), summary.Millis(summary.Percentile(res.seqDel, 99)),
				opts.pods, summary.Millis(res.concAdd), summary.Millis(res.concDel))
			if !s.daemon {
				continue
			}
			m, err := s.memoryWith(ctx, opts.rssPods)
			if err != nil {
				return err
			}
			rep.memory = append(rep.memory, m)
			logf("  daemon with %d pods: VmRSS %s (anon %s, file %s), VmHWM %s", opts.rssPods, summary.MiB(m.rss), summary.MiB(m.anon), summary.MiB(m.file), summary.MiB(m.hwm))
		}
	}
	rep.finished = time.Now().UTC()
	rep.write(out)
	return nil
}

// newPods creates the pods' namespaces, a few at a time.
func newPods(l *lab.Lab, prefix string, n int) ([]*lab.Pod, error) {
	pods := make([]*lab.Pod, n)
	var g errgroup.Group
	g.SetLimit(2 * runtime.NumCPU())
	for i := range pods {
		g.Go(func() (err error) {
			pods[i], err = l.NewPod(fmt.Sprintf("%s%d", prefix, i))
			return err
		})
	}
	return pods, g.Wait()
}
