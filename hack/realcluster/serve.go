package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nodenet/nodenet/e2e/realnode"
	"github.com/nodenet/nodenet/e2e/realnode/images"
	"github.com/nodenet/nodenet/hack/internal/background"
)

// serve builds the images, starts the cluster, installs nodenet from deploy/, prints the ready
// marker and keeps everything running until SIGTERM or SIGINT, then removes it all.
func serve(ctl background.Control, o options) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	section("Building the images every node imports: nodenet's (from " + bin + ") and the e2e suite's, from scratch")
	start := time.Now()
	archive, refs, err := images.Build(ctx, images.Options{NodenetBinDir: bin, AgnhostPath: filepath.Join(o.nodeBin, "agnhost"),
		CorednsPath: o.coredns, CacheDir: filepath.Join(cacheDir(), "images")})
	if err != nil {
		return err
	}
	fmt.Printf("%s (%d images, %v)\n", archive, len(refs), time.Since(start).Round(time.Second))

	section(fmt.Sprintf("Starting the control plane and %d nodes (containerd, runc, kubelet), each in its own namespaces", o.nodes))
	c, err := realnode.Start(ctx, realnode.Options{ClusterBinDir: o.clusterBin, NodeBinDir: o.nodeBin, Images: archive, Prefix: o.prefix, Nodes: o.nodes})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Printf("\n%s\n", background.CleanupHeading)
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Println("every namespace, process, mount and cgroup of the cluster is removed")
	}()
	if err := ctl.WriteState(background.State{PID: os.Getpid(), ControlPlaneNS: c.CP.NS.Name,
		AdminKubeconfig: c.CP.AdminKubeconfig, ClusterBin: o.clusterBin}); err != nil {
		return err
	}
	kubectl(c, "get", "nodes", "-o", "wide")
	fmt.Println("(NotReady: no CNI configuration yet — nodenet is not installed)")

	section("Installing nodenet exactly as a user does: kubectl apply -f " + o.deploy)
	start = time.Now()
	if err := c.Install(ctx, o.deploy); err != nil {
		return err
	}
	fmt.Printf("every node Ready %v after kubectl apply\n", time.Since(start).Round(100*time.Millisecond))
	kubectl(c, "get", "nodes", "-o", "wide")
	kubectl(c, "get", "pods", "-A", "-o", "wide")
	fmt.Println(background.ReadyMarker)
	<-ctx.Done()
	return nil
}

func kubectl(c *realnode.Cluster, args ...string) {
	out, err := c.Kubectl(args...)
	fmt.Print(out)
	if err != nil {
		fmt.Println(err)
	}
}

func section(title string) { fmt.Printf("\n=== %s\n", title) }

// cacheDir is where heavy builds are kept between runs, as the Makefile's NODENET_CACHE.
func cacheDir() string {
	if d := os.Getenv("NODENET_CACHE"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "nodenet")
}
