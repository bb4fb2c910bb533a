// Command dns benchmarks node-local DNS: nodenet's DNS server against CoreDNS configured as
// NodeLocal DNSCache plus the kubernetes plugin, both watching the same kube-apiserver in the
// same run, each in its own lab node namespace, never both running at once.
//
// The benchmark writes selector-less Services with one named port and one EndpointSlice each
// (--scales, 10 and 10,000), and serves "external" names itself from an authoritative server on
// the lab's outside host, which both sides forward to. At each size every round starts each side
// afresh, bound to 169.254.20.10, with its process bound to one CPU (--server-cpu) and the load
// generator (its own open-loop one, or dnsperf), run from a pod-like client namespace, bound to
// the other (--load-cpu); both run at real-time priority unless --realtime=false. After a warm-up
// that also checks the answers, for each query mix — Service names, search-path NXDOMAINs,
// cached external names — it finds the highest target rate answered with no loss (every query
// answered within --timeout, each step --step long) and measures p50/p99 latency at half that
// rate; then it reads the process's VmRSS and VmHWM. Before the sides, it measures the load
// generator's own ceiling against a trivial responder on the same path. The report shows
// medians over rounds, the
// nodenet/CoreDNS ratio and the targets of issue 5. A side that cannot run (nodenet while its
// daemon serves no DNS) is reported as not available. It needs root for the namespaces;
// everything it creates is removed on exit.
//
//	go run ./bench/dns --bin bin --cluster-bin "$(hack/cluster-bins.sh)" --coredns "$(hack/coredns-bin.sh)"
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodenet/nodenet/bench/internal/harness"
	"github.com/nodenet/nodenet/e2e/lab"
)

type options struct {
	bin          string // directory holding nodenet and nodenet-cni
	clusterBin   string // directory holding kube-apiserver, ...; "" runs hack/cluster-bins.sh
	coredns      string // the CoreDNS binary; "" runs hack/coredns-bin.sh
	generator    string // genGo or genDNSPerf
	dnsperf      string
	deploy       string // nodenet's deploy/ manifests (RBAC for the daemon)
	logs         string // where the servers' logs are copied at the end; "" keeps only failing ones
	sides        []string
	nodenetProxy bool // run nodenet's Service proxy beside its DNS server

	rounds        int
	scales        []int
	externalNames int
	workers       int

	serverCPU, loadCPU int
	sched              sched         // of the server and the load generator
	clients, inFlight  int           // dnsperf -c and -q
	step               time.Duration // length of one load step
	tries              int           // of a step that fails
	latencyRate        float64       // where every side's latency is also measured
	timeout            time.Duration // a query unanswered this long is lost
	precision          float64       // the search stops when the failing rate is within this factor of the passing one
	grace              time.Duration
}

func main() {
	// The benchmark runs its load generator and its trivial responder as child processes of its
	// own binary.
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "loadgen":
			err = loadgenMain(os.Args[2:], os.Stdout)
		case "echo":
			err = echoMain()
		case "upstream":
			err = upstreamMain(os.Args[2:], os.Stdout)
		default:
			os.Exit(benchMain())
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	os.Exit(benchMain())
}

func benchMain() int {
	var opts options
	var scales, sides string
	flag.StringVar(&opts.bin, "bin", "bin", "directory holding nodenet and nodenet-cni (make build)")
	flag.StringVar(&opts.clusterBin, "cluster-bin", "", `directory holding etcd, kube-apiserver, kube-controller-manager and kubectl ("": run hack/cluster-bins.sh)`)
	flag.StringVar(&opts.coredns, "coredns", "", `the CoreDNS binary ("": run hack/coredns-bin.sh)`)
	flag.StringVar(&opts.generator, "generator", genGo, "load generator: go (this program's, open loop) or dnsperf (closed loop, Debian package dnsperf)")
	flag.StringVar(&opts.dnsperf, "dnsperf", "dnsperf", "the dnsperf command, with --generator=dnsperf")
	flag.StringVar(&opts.deploy, "deploy", "deploy", "nodenet's deploy/ directory (rbac.yaml, policy.yaml)")
	flag.StringVar(&opts.logs, "logs", "", "directory to copy the servers' logs into at the end (default: only a failing side's log, into $TMPDIR)")
	flag.StringVar(&sides, "sides", sideNodenet+","+sideCoreDNS, "sides to measure")
	flag.BoolVar(&opts.nodenetProxy, "nodenet-proxy", false, "run nodenet's Service proxy in the same daemon (its memory then counts too)")
	flag.IntVar(&opts.rounds, "rounds", 1, "rounds per size; each starts every side afresh, alternating which goes first")
	flag.StringVar(&scales, "scales", "10,10000", "Service counts")
	flag.IntVar(&opts.externalNames, "external-names", 1000, "distinct external names (the search-path mix tries each under the three search suffixes)")
	flag.IntVar(&opts.workers, "workers", 32, "API requests in flight while creating Services")
	flag.IntVar(&opts.serverCPU, "server-cpu", 0, "CPU the DNS server under test is bound to")
	flag.IntVar(&opts.loadCPU, "load-cpu", 1, "CPU the load generator is bound to")
	flag.BoolVar(&opts.sched.realtime, "realtime", true, "schedule the server and the load generator SCHED_RR on their CPUs (the machine is shared)")
	flag.IntVar(&opts.sched.nice, "nice", -10, "nice value of the server and the load generator with --realtime=false")
	flag.IntVar(&opts.clients, "clients", 20, "dnsperf -c: clients (sockets, source ports)")
	flag.IntVar(&opts.inFlight, "in-flight", 200, "dnsperf -q: queries outstanding at most")
	flag.DurationVar(&opts.step, "step", 4*time.Second, "length of one load step")
	flag.IntVar(&opts.tries, "tries", 2, "tries of a step before it counts as failed")
	flag.Float64Var(&opts.latencyRate, "latency-rate", 5000, "rate (queries/s) at which every side's latency is also measured, below every side's capacity")
	flag.DurationVar(&opts.timeout, "timeout", time.Second, "a query not answered within this is lost")
	flag.Float64Var(&opts.precision, "precision", 1.04, "the rate search stops when the lowest failing rate is within this factor of the highest passing one")
	flag.DurationVar(&opts.grace, "grace", time.Minute, "a side that answers no Service name this long after its start is not available")
	flag.Parse()
	var err error
	if opts.scales, err = harness.ParseCounts(scales); err != nil {
		fmt.Fprintln(os.Stderr, "bench/dns: --scales:", err)
		return 2
	}
	opts.sides = strings.Split(sides, ",")
	for _, s := range opts.sides {
		if s != sideNodenet && s != sideCoreDNS {
			fmt.Fprintf(os.Stderr, "bench/dns: --sides: unknown side %q (want %s, %s)\n", s, sideNodenet, sideCoreDNS)
			return 2
		}
	}
	if opts.rounds < 1 || opts.externalNames < 1 || opts.workers < 1 || opts.clients < 1 || opts.inFlight < 1 || opts.tries < 1 {
		fmt.Fprintln(os.Stderr, "bench/dns: --rounds, --external-names, --workers, --clients, --in-flight and --tries must be at least 1")
		return 2
	}
	if opts.generator != genGo && opts.generator != genDNSPerf {
		fmt.Fprintf(os.Stderr, "bench/dns: --generator: unknown %q (want %s, %s)\n", opts.generator, genGo, genDNSPerf)
		return 2
	}
	if opts.serverCPU == opts.loadCPU {
		fmt.Fprintln(os.Stderr, "bench/dns: --server-cpu and --load-cpu must differ")
		return 2
	}
	if opts.sched.nice < -20 || opts.sched.nice > 19 {
		fmt.Fprintln(os.Stderr, "bench/dns: --nice must be within -20..19")
		return 2
	}
	if opts.precision <= 1 || opts.step < time.Second || opts.timeout <= 0 || opts.latencyRate < minRate {
		fmt.Fprintf(os.Stderr, "bench/dns: --precision must be above 1, --step at least 1s, --timeout positive, --latency-rate at least %d\n", minRate)
		return 2
	}
	return harness.Main("bench/dns", "bench-dns", func(ctx context.Context) error {
		return run(ctx, opts, os.Stdout, os.Stderr)
	})
}

// run builds the cluster, the upstream and both sides, measures every size, and writes the report
// to out; progress goes to progress.
func run(ctx context.Context, opts options, out, progress io.Writer) (err error) {
	started := time.Now()
	logf := harness.Progress(progress)
	binDir, err := harness.Binaries(opts.bin)
	if err != nil {
		return err
	}
	if opts.generator == genDNSPerf {
		if opts.dnsperf, err = exec.LookPath(opts.dnsperf); err != nil {
			return fmt.Errorf("%w (install the Debian package dnsperf)", err)
		}
	}
	if opts.clusterBin == "" {
		logf("finding the cluster binaries (hack/cluster-bins.sh; the first build takes about 15 minutes)")
		if opts.clusterBin, err = harness.Built(ctx, progress, "hack/cluster-bins.sh"); err != nil {
			return err
		}
	}
	if opts.coredns == "" {
		logf("finding CoreDNS (hack/coredns-bin.sh; the first build takes about 5 minutes)")
		if opts.coredns, err = harness.Built(ctx, progress, "hack/coredns-bin.sh"); err != nil {
			return err
		}
	}
	corednsVersion, err := exec.CommandContext(ctx, opts.coredns, "-version").Output()
	if err != nil {
		return fmt.Errorf("%s -version: %w", opts.coredns, err)
	}
	deploy, err := filepath.Abs(opts.deploy)
	if err != nil {
		return err
	}

	l, err := lab.New(binDir, fmt.Sprintf("bd%d", os.Getpid()%10000))
	if err != nil {
		return err
	}
	var sides []*side
	var up *harness.NetnsProc
	defer func() {
		logf("removing the lab (processes, namespaces, files)")
		for _, s := range sides {
			err = errors.Join(err, s.proc.Stop())
			if opts.logs != "" {
				path, kerr := s.keepLog(opts.logs)
				err = errors.Join(err, kerr)
				logf("%s log kept in %s", s.name, path)
			}
		}
		if up != nil {
			err = errors.Join(err, up.Stop())
		}
		err = errors.Join(err, l.Close())
	}()

	logf("measuring the load generator's ceiling against a trivial responder")
	ceiling, floor, err := generatorCeiling(ctx, l, opts, logf)
	if err != nil {
		return fmt.Errorf("load generator ceiling: %w", err)
	}

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
	outside, err := l.AddOutside()
	if err != nil {
		return err
	}
	if up, err = startUpstream(ctx, l, outside, opts); err != nil {
		return err
	}
	logf("joining the nodes")
	for i, name := range opts.sides {
		var s *side
		switch name {
		case sideCoreDNS:
			s, err = newCoreDNSSide(ctx, cp, l, opts.coredns, i+1)
		case sideNodenet:
			s, err = newNodenetSide(ctx, cp, l, i+1, opts.nodenetProxy)
		}
		if err != nil {
			return err
		}
		sides = append(sides, s)
	}
	w, err := newWorkload(ctx, client, opts.workers)
	if err != nil {
		return err
	}

	code, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	if err != nil {
		code = []byte("unknown (git describe failed)")
	}
	rep := &report{opts: opts, started: started.UTC(), corednsVersion: strings.SplitN(strings.TrimSpace(string(corednsVersion)), "\n", 2)[0],
		code: strings.TrimSpace(string(code)), ceiling: ceiling, floor: floor,
		results: map[string]map[int][]roundResult{}, created: map[int]time.Duration{}}
	for _, size := range opts.scales {
		took, err := w.grow(ctx, size)
		if err != nil {
			return err
		}
		rep.created[size] = took
		logf("%d Services in the API server (created in %v)", size, took.Round(time.Millisecond))
		mixes, err := writeMixes(l.Dir, size, w, opts.externalNames)
		if err != nil {
			return err
		}
		rep.mixes = mixes
		for r := range opts.rounds {
			order := slices.Clone(sides)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, s := range order {
				if s.unavailable != "" {
					continue
				}
				logf("%d Services, round %d/%d: %s", size, r+1, opts.rounds, s.name)
				res, err := s.round(ctx, w, mixes, opts, logf)
				if err != nil {
					if ctx.Err() != nil || s.name != sideNodenet {
						return fmt.Errorf("%s: %w", s.name, err)
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
	if rep.upstreamQueries, err = upstreamQueries(up); err != nil {
		return err
	}
	rep.finished = time.Now().UTC()
	rep.write(out)
	return nil
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
	rc.UserAgent = "nodenet-bench-dns"
	return kubernetes.NewForConfig(rc)
}
