// Command proxy benchmarks Service load balancing: nodenet's proxy against kube-proxy
// --proxy-mode=nftables, both watching the same kube-apiserver in the same run, each in its own
// lab node namespace, never both running at once.
//
// The benchmark writes selector-less Services with one EndpointSlice of ten ready endpoints each
// (managed by the benchmark, so the endpointslice controller leaves them alone) and grows them
// through --connect-services (10) and each of --scales (1k, 10k). At each size every round starts
// each proxy from cold (its tables removed) and times process start → every Service's ClusterIP
// in its Service map, reading the node namespace's nftables over netlink. At the smallest and the
// largest size it times TCP connects through a ClusterIP from a client namespace routed by the
// node namespace to real listeners; at the largest it also times single-endpoint changes (API
// call → new endpoint chain in the Service's chain). CPU time and memory come from /proc. Rounds
// alternate which side goes first; the report shows medians over rounds, the
// nodenet/kube-proxy ratio and the targets of issue 4. Each round also times the list floor
// (floor.go): exec → the Services and EndpointSlices received by a minimal client, which no
// proxy's cold start can beat. A side that cannot run (nodenet while its
// proxy is not wired into the daemon) is reported as not available. It needs root for the
// namespaces; everything it creates is removed on exit.
//
//	go run ./bench/proxy --bin bin --cluster-bin "$(hack/cluster-bins.sh)"
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodenet/nodenet/bench/internal/harness"
	"github.com/nodenet/nodenet/bench/internal/summary"
	"github.com/nodenet/nodenet/e2e/lab"
)

type options struct {
	bin        string   // directory holding nodenet and nodenet-cni
	clusterBin string   // directory holding kube-apiserver, kube-proxy, ...; "" runs hack/cluster-bins.sh
	deploy     string   // nodenet's deploy/ manifests (RBAC for the daemon)
	logs       string   // where the proxies' logs are copied at the end; "" keeps only failing ones (in $TMPDIR)
	profiles   profiler // nodenet's CPU and heap profiles per cold start; dir "" takes none
	sides      []string
	// nodenetMemoryLimit is GOMEMLIMIT for nodenet's daemon ("": none), as deploy/ sets it from
	// the container's memory limit.
	nodenetMemoryLimit string

	rounds          int
	connectServices int   // the small size, for connect latency
	scales          []int // cold-start sizes; the largest also gets connects and changes
	changes         int
	connects        int
	workers         int

	coldPoll, changePoll, changeGap time.Duration
	settle, syncTimeout, grace      time.Duration
}

func main() { os.Exit(benchMain()) }

func benchMain() int {
	var opts options
	var scales, sides string
	flag.StringVar(&opts.bin, "bin", "bin", "directory holding nodenet and nodenet-cni (make build)")
	flag.StringVar(&opts.clusterBin, "cluster-bin", "", `directory holding etcd, kube-apiserver, kube-controller-manager, kubectl and kube-proxy ("": run hack/cluster-bins.sh)`)
	flag.StringVar(&opts.deploy, "deploy", "deploy", "nodenet's deploy/ directory (rbac.yaml, policy.yaml)")
	flag.StringVar(&opts.logs, "logs", "", "directory to copy the proxies' logs into at the end (default: only a failing side's log, into $TMPDIR)")
	flag.StringVar(&opts.profiles.dir, "profiles", "", "directory for nodenet's CPU profile of each cold start and heap profile after it (from its /debug/pprof/); empty: none")
	flag.IntVar(&opts.profiles.seconds, "profile-seconds", 5, "length of the CPU profile that starts with each nodenet cold start")
	flag.StringVar(&opts.nodenetMemoryLimit, "nodenet-memory-limit", "", `GOMEMLIMIT of nodenet's daemon (e.g. 100MiB), as a memory limit of its container gives it; "" for none`)
	flag.StringVar(&sides, "sides", sideNodenet+","+sideKubeProxy, "sides to measure")
	flag.IntVar(&opts.rounds, "rounds", 3, "rounds per size; each starts every side from cold, alternating which goes first")
	flag.IntVar(&opts.connectServices, "connect-services", 10, "Services at the small size, where connect latency is measured first")
	flag.StringVar(&scales, "scales", "1000,10000", "Service counts for cold starts; the largest also gets endpoint changes and connects")
	flag.IntVar(&opts.changes, "changes", 50, "single-endpoint changes per round at the largest size")
	flag.IntVar(&opts.connects, "connects", 1000, "timed connects per round (each to the ClusterIP and straight to a backend)")
	flag.IntVar(&opts.workers, "workers", defaultWorkers(), "API requests in flight while creating Services")
	flag.DurationVar(&opts.coldPoll, "cold-poll", 10*time.Millisecond, "poll interval of the Service map during a cold start (at least the last dump's duration)")
	flag.DurationVar(&opts.changePoll, "change-poll", time.Millisecond, "poll interval of a Service's chain after an endpoint change")
	flag.DurationVar(&opts.changeGap, "change-gap", 1100*time.Millisecond, "pause after each change is programmed (kube-proxy's minSyncPeriod is 1s)")
	flag.DurationVar(&opts.settle, "settle", 2*time.Second, "pause after a cold start before reading CPU and memory (children reaped), connects and changes")
	flag.DurationVar(&opts.syncTimeout, "sync-timeout", 5*time.Minute, "longest wait for a cold start or one change")
	flag.DurationVar(&opts.grace, "grace", time.Minute, "a side whose Service map does not exist this long after its first start is not available")
	flag.Parse()
	var err error
	if opts.scales, err = harness.ParseCounts(scales); err != nil {
		fmt.Fprintln(os.Stderr, "bench/proxy: --scales:", err)
		return 2
	}
	opts.sides = strings.Split(sides, ",")
	for _, s := range opts.sides {
		if s != sideNodenet && s != sideKubeProxy {
			fmt.Fprintf(os.Stderr, "bench/proxy: --sides: unknown side %q (want %s, %s)\n", s, sideNodenet, sideKubeProxy)
			return 2
		}
	}
	if opts.rounds < 1 || opts.connectServices < 1 || opts.changes < 1 || opts.connects < 1 || opts.workers < 1 {
		fmt.Fprintln(os.Stderr, "bench/proxy: --rounds, --connect-services, --changes, --connects and --workers must be at least 1")
		return 2
	}
	return harness.Main("bench/proxy", "bench-proxy", func(ctx context.Context) error {
		return run(ctx, opts, os.Stdout, os.Stderr)
	})
}

// run builds the cluster and both sides, measures every size, and writes the report to out;
// progress goes to progress.
func run(ctx context.Context, opts options, out, progress io.Writer) (err error) {
	started := time.Now()
	logf := harness.Progress(progress)
	binDir, err := harness.Binaries(opts.bin)
	if err != nil {
		return err
	}
	if opts.clusterBin == "" {
		logf("finding the cluster binaries (hack/cluster-bins.sh; the first build takes about 15 minutes)")
		if opts.clusterBin, err = harness.Built(ctx, progress, "hack/cluster-bins.sh"); err != nil {
			return err
		}
	}
	deploy, err := filepath.Abs(opts.deploy)
	if err != nil {
		return err
	}

	l, err := lab.New(binDir, fmt.Sprintf("bp%d", os.Getpid()%10000))
	if err != nil {
		return err
	}
	var sides []*side
	defer func() {
		logf("removing the lab (processes, namespaces, files)")
		for _, s := range sides {
			err = errors.Join(err, s.proc.Stop())
			s.topo.stop()
			if opts.logs != "" {
				path, kerr := s.keepLog(opts.logs)
				err = errors.Join(err, kerr)
				logf("%s log kept in %s", s.name, path)
			}
		}
		err = errors.Join(err, l.Close())
	}()

	logf("starting etcd, kube-apiserver and kube-controller-manager")
	cp, err := l.StartControlPlane(ctx, opts.clusterBin)
	if err != nil {
		return err
	}
	if err := cp.ApplyDeploy(filepath.Join(deploy, "rbac.yaml"), filepath.Join(deploy, "policy.yaml")); err != nil {
		return err
	}
	client, err := benchClient(cp)
	if err != nil {
		return err
	}
	logf("joining the nodes")
	for i, name := range opts.sides {
		var s *side
		switch name {
		case sideKubeProxy:
			s, err = newKubeProxySide(ctx, cp, l, opts.clusterBin, i+1)
		case sideNodenet:
			s, err = newNodenetSide(ctx, cp, l, i+1, opts.nodenetMemoryLimit)
		}
		if err != nil {
			return err
		}
		sides = append(sides, s)
	}
	w, err := newWorkload(ctx, client, opts.workers, opts.connectServices)
	if err != nil {
		return err
	}
	floorBin, err := buildListFloor(ctx, l.Dir)
	if err != nil {
		return err
	}
	floor := listFloor{bin: floorBin, netns: sides[0].node.NS.Name, kubeconfig: sides[0].kubeconfig}
	version, err := exec.CommandContext(ctx, filepath.Join(opts.clusterBin, "kube-proxy"), "--version").Output()
	if err != nil {
		return fmt.Errorf("kube-proxy --version: %w", err)
	}

	code, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	if err != nil {
		code = []byte("unknown (git describe failed)")
	}
	rep := &report{opts: opts, started: started.UTC(), kubeProxyVersion: strings.TrimSpace(string(version)), code: strings.TrimSpace(string(code)),
		results: map[string]map[int][]roundResult{}, created: map[int]time.Duration{}, floors: map[int][]time.Duration{}}
	sizes := append([]int{opts.connectServices}, opts.scales...)
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	rep.sizes = sizes
	for si, size := range sizes {
		took, err := w.grow(ctx, size)
		if err != nil {
			return err
		}
		rep.created[size] = took
		logf("%d Services × %d endpoints in the API server (created in %v)", size, endpointsPerService, took.Round(time.Millisecond))
		want := make([]netip.AddrPort, 0, size)
		for _, svc := range w.services {
			want = append(want, netip.AddrPortFrom(svc.vip, servicePort))
		}
		connect, changes := si == 0 || si == len(sizes)-1, si == len(sizes)-1 && si > 0
		for r := range opts.rounds {
			took, err := floor.measure(ctx, size)
			if err != nil {
				return err
			}
			rep.floors[size] = append(rep.floors[size], took)
			logf("%d Services, round %d/%d: list floor %s", size, r+1, opts.rounds, summary.Millis(took))
			order := slices.Clone(sides)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, s := range order {
				if s.unavailable != "" {
					continue
				}
				var grace time.Duration
				if len(rep.results[s.name]) == 0 {
					grace = opts.grace
				}
				logf("%d Services, round %d/%d: %s", size, r+1, opts.rounds, s.name)
				rng := rand.New(rand.NewPCG(uint64(size), uint64(r))) // the same changes for both sides
				s.profileName = fmt.Sprintf("%s-%d-r%d", s.name, size, r+1)
				res, err := s.round(ctx, w, want, opts, connect, changes, grace, rng)
				if err != nil {
					if ctx.Err() != nil || s.name != sideNodenet {
						return err
					}
					s.unavailable = err.Error()
					if path, kerr := s.keepLog(cmp.Or(opts.logs, os.TempDir())); kerr == nil {
						s.unavailable += " (log: " + path + ")"
					}
					logf("  %s is not available: %s", s.name, s.unavailable)
					continue
				}
				res.first = order[0].name
				rep.add(s.name, size, res)
				logf("  %s", res.summary())
			}
		}
	}
	for _, s := range sides {
		if s.unavailable != "" {
			rep.unavailable = append(rep.unavailable, [2]string{s.name, s.unavailable})
		}
	}
	rep.finished = time.Now().UTC()
	rep.write(out)
	return nil
}

// roundResult is what one side measured in one round at one size.
type roundResult struct {
	first   string // the side that went first in this round
	cold    coldResult
	connect *connectResult // at the smallest and largest size
	change  *changeResult  // at the largest size
	end     procStats      // at the end of the round
	peakRSS int64          // the highest VmRSS or VmHWM sampled during the round
}

func (r roundResult) summary() string {
	s := fmt.Sprintf("cold start %s (CPU %s, RSS %s)", summary.Millis(r.cold.took), secs(r.cold.stats.cpu), summary.MiB(r.cold.stats.rss))
	if c := r.connect; c != nil {
		s += fmt.Sprintf(" | connect p50 via ClusterIP %s, direct %s", us(summary.Percentile(c.vip, 50)), us(summary.Percentile(c.direct, 50)))
	}
	if c := r.change; c != nil {
		s += fmt.Sprintf(" | change p50 %s p99 %s (CPU %s)", summary.Millis(summary.Percentile(c.latencies, 50)), summary.Millis(summary.Percentile(c.latencies, 99)), secs(c.cpu))
	}
	return s + fmt.Sprintf(" | peak RSS %s", summary.MiB(r.peakRSS))
}

// round starts the side from cold and measures what the size calls for; the process is stopped
// at the end, whatever happens.
func (s *side) round(ctx context.Context, w *workload, want []netip.AddrPort, opts options, connect, changes bool, grace time.Duration, rng *rand.Rand) (res roundResult, err error) {
	defer func() { err = errors.Join(err, s.proc.Stop()) }()
	s.peakRSS = 0
	if res.cold, err = s.coldStart(ctx, want, opts, grace); err != nil {
		return res, err
	}
	if connect {
		c, err := s.connectPhase(ctx, w.services[0].vip, opts)
		if err != nil {
			return res, err
		}
		res.connect = &c
		s.sampleRSS()
	}
	if changes {
		c, err := s.changePhase(ctx, w, res.cold.chains, opts, rng)
		if err != nil {
			return res, err
		}
		res.change = &c
	}
	s.sampleRSS()
	if res.end, err = readProc(s.proc.PID()); err != nil {
		return res, err
	}
	res.peakRSS = s.peakRSS
	if connect {
		err = s.floorConnects(res.connect, opts.connects)
	}
	return res, err
}

// benchClient talks to the API server as cluster admin with a rate limit high enough to create
// 20k objects quickly.
func benchClient(cp *lab.ControlPlane) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", cp.AdminKubeconfig)
	if err != nil {
		return nil, err
	}
	rc.Dial = cp.NS.Dial // the host's namespace has no route to the underlay
	rc.QPS, rc.Burst = 5000, 10000
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.UserAgent = "nodenet-bench-proxy"
	return kubernetes.NewForConfig(rc)
}
