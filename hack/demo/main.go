// Command demo replays the seed article's lab on a simulated cluster: a real control plane and two
// nodes in network namespaces, each running `nodenet daemon`, with the article's pods created
// through libcni exactly as a container runtime would. `demo up` leaves the cluster running for
// `demo shell`; `demo down` removes everything it created.
//
//	demo up    --bin DIR --cluster-bin DIR   start the cluster in the background, print the lab
//	demo shell                               a shell inside the control-plane namespace with kubectl
//	demo down                                stop the cluster and remove every namespace and file
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nodenet/nodenet/hack/internal/background"
)

// defaultStateDir records the running demo (its PID, namespaces, kubeconfig) between the commands.
const defaultStateDir = "/run/nodenet-demo"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demo up|serve|shell|down [flags]")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces (run it through sudo make demo)")
		os.Exit(1)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	bin := fs.String("bin", "bin", "directory holding nodenet and nodenet-cni")
	clusterBin := fs.String("cluster-bin", "", "directory holding etcd, kube-apiserver, kube-controller-manager and kubectl (hack/cluster-bins.sh)")
	dir := fs.String("state", defaultStateDir, "directory recording the running demo")
	prefix := fs.String("prefix", "nd", "prefix of the demo's network namespace names")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	ctl := background.Control{Dir: *dir, UpTarget: "demo", ShellTarget: "demo-shell", DownTarget: "demo-down", PromptName: "nodenet-demo"}
	var err error
	switch os.Args[1] {
	case "up":
		err = ctl.Up("--state", *dir, "--bin", *bin, "--cluster-bin", *clusterBin, "--prefix", *prefix)
	case "serve":
		err = serve(ctl, *bin, *clusterBin, *prefix)
	case "shell":
		err = ctl.Shell()
	case "down":
		err = ctl.Down()
	default:
		err = fmt.Errorf("unknown command %q (want up, shell or down)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
