// Command realcluster runs a Kubernetes cluster of real nodes on this machine (package
// e2e/realnode: kubelet + containerd + runc per node, each in its own network and mount
// namespace), installs nodenet on it with `kubectl apply -f deploy/` exactly as a user does, and
// runs the upstream conformance suite against it.
//
//	realcluster up          start the cluster in the background, install nodenet, print how to use it
//	realcluster shell       a shell inside the control-plane namespace with kubectl
//	realcluster down        stop the cluster and remove every namespace, process, mount and cgroup
//	realcluster conformance run e2e.test's [sig-network] [Conformance] specs (--all: with Serial
//	                        and Disruptive), print the summary and keep the JUnit report
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nodenet/nodenet/e2e/realnode"
	"github.com/nodenet/nodenet/hack/internal/background"
)

// options are the flags every command shares; up passes them on to serve.
type options struct {
	bin, clusterBin, nodeBin, coredns, deploy string
	prefix                                    string
	nodes                                     int
	// conformance only
	all       bool
	reportDir string
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: realcluster up|serve|shell|down|conformance [flags]")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "realcluster: needs root for namespaces, mounts and cgroups (run it through sudo make real-cluster)")
		os.Exit(1)
	}
	var o options
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	fs.StringVar(&o.bin, "bin", "bin", "directory holding nodenet and nodenet-cni (make build)")
	fs.StringVar(&o.clusterBin, "cluster-bin", "", "directory of hack/cluster-bins.sh")
	fs.StringVar(&o.nodeBin, "node-bin", "", "directory of hack/node-bins.sh")
	fs.StringVar(&o.coredns, "coredns", "", "CoreDNS binary for agnhost's image (hack/coredns-bin.sh); the DNS specs that start their own server need it")
	fs.StringVar(&o.deploy, "deploy", "deploy", "nodenet's manifests, applied with kubectl apply -f")
	dir := fs.String("state", "/run/nodenet-real-cluster", "directory recording the running cluster")
	fs.StringVar(&o.prefix, "prefix", "rc", "prefix of the cluster's network namespace names")
	fs.IntVar(&o.nodes, "nodes", 2, "number of nodes")
	fs.BoolVar(&o.all, "all", false, "conformance: also the [Serial] and [Disruptive] specs")
	fs.StringVar(&o.reportDir, "report-dir", "_artifacts/conformance", "conformance: where e2e.test's JUnit report and log go")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	ctl := background.Control{Dir: *dir, UpTarget: "real-cluster", ShellTarget: "real-cluster-shell",
		DownTarget: "real-cluster-down", PromptName: "nodenet-real-cluster", Sweep: realnode.Sweep}
	var err error
	switch os.Args[1] {
	case "up":
		err = ctl.Up(o.serveArgs(*dir)...)
	case "serve":
		err = serve(ctl, o)
	case "shell":
		err = ctl.Shell()
	case "down":
		err = ctl.Down()
	case "conformance":
		err = conformance(ctl, o, *dir)
	default:
		err = fmt.Errorf("unknown command %q (want up, shell, down or conformance)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "realcluster:", err)
		os.Exit(1)
	}
}

func (o options) serveArgs(stateDir string) []string {
	return []string{"--state", stateDir, "--bin", o.bin, "--cluster-bin", o.clusterBin, "--node-bin", o.nodeBin,
		"--coredns", o.coredns, "--deploy", o.deploy, "--prefix", o.prefix, "--nodes", fmt.Sprint(o.nodes)}
}
