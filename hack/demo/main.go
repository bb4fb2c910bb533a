// Command demo replays the seed article's lab on simulated nodes: it starts nodenet daemons in
// network namespaces, creates the article's pods through libcni exactly as a container runtime
// would, and prints what the article shows. Everything is removed on exit, also on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nodenet/nodenet/e2e/lab"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding nodenet and nodenet-cni")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces (run: sudo make demo)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string) (err error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	l, err := lab.New(abs, fmt.Sprintf("nd%d", os.Getpid()%10000))
	if err != nil {
		return err
	}
	defer func() {
		section("Cleaning up")
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Println("all namespaces, daemons and files of the demo are removed")
	}()

	var c checks
	section("Starting a simulated node (network namespace) running `nodenet daemon`")
	outside, err := l.AddOutside()
	if err != nil {
		return err
	}
	node, err := l.AddNode(lab.NodeOptions{Name: "node1", Index: 1})
	if err != nil {
		return err
	}
	if err := node.Start(); err != nil {
		return err
	}
	if err := node.WaitReady(ctx); err != nil {
		return err
	}
	fmt.Printf("node %s: address %s, podCIDRs %v\n", node.Name, node.Address, node.PodCIDRs)
	conflist, err := os.ReadFile(filepath.Join(node.ConfDir, "10-nodenet.conflist"))
	if err != nil {
		return err
	}
	fmt.Printf("the daemon installed %s and wrote %s:\n%s\n",
		filepath.Join(node.CNIBinDir, "nodenet-cni"), filepath.Join(node.ConfDir, "10-nodenet.conflist"), conflist)

	section("Creating the article's pods through libcni (as containerd does)")
	rt, err := node.Runtime()
	if err != nil {
		return err
	}
	pods := map[string]*lab.Pod{}
	for _, name := range []string{"default-nginx", "default-test", "test-nginx"} {
		p, err := l.NewPod(name)
		if err != nil {
			return err
		}
		start := time.Now()
		if err := rt.Add(ctx, p); err != nil {
			return fmt.Errorf("ADD %s: %w", name, err)
		}
		pods[name] = p
		fmt.Printf("%-14s %-16s ADD took %v\n", name, p.IPs[0], time.Since(start).Round(time.Millisecond))
		if strings.HasSuffix(name, "nginx") {
			stopServer, err := serveHTTP(p)
			if err != nil {
				return err
			}
			defer stopServer()
		}
	}
	fmt.Println()
	if out, err := node.NS.Run("ip", "-br", "addr", "show", "dev", "nodenet0"); err == nil {
		fmt.Print("bridge on the node: ", out)
	}
	if out, err := pods["default-test"].NS.Run("ip", "route"); err == nil {
		fmt.Print("routes inside default-test:\n", out)
	}

	section("Pod to pod on the node (no NAT)")
	test := pods["default-test"]
	for _, target := range []string{"default-nginx", "test-nginx"} {
		addr := pods[target].IPs[0].Addr().String()
		c.report(fmt.Sprintf("ping default-test → %s (%s)", target, addr), test.NS.Ping(addr))
		body, err := httpGet(ctx, test, addr)
		c.report(fmt.Sprintf("curl http://%s/ from default-test → %q", addr, body), err)
	}

	section("Pod to the world outside the cluster (masqueraded to the node address)")
	stopOut, err := outside.ServeRemoteAddr(":8081")
	if err != nil {
		return err
	}
	defer stopOut()
	seen, err := test.NS.AskRemoteAddr(ctx, net.JoinHostPort(lab.OutsideAddr, "8081"))
	c.report(fmt.Sprintf("default-test (%s) → %s: the outside host sees source %s", test.IPs[0].Addr(), lab.OutsideAddr, seen), err)
	if out, err := node.NS.Run("nft", "list", "table", "inet", "nodenet"); err == nil {
		fmt.Print("\nnftables on the node (nodenet's own table):\n", out)
	}

	section("Deleting the pods (CNI DEL)")
	for _, name := range []string{"default-nginx", "default-test", "test-nginx"} {
		c.report("DEL "+name, rt.Del(ctx, pods[name]))
	}
	fmt.Println("\nServices (ClusterIP, NodePort), DNS and several nodes join this demo as those issues land.")
	if c.failed > 0 {
		return fmt.Errorf("%d checks failed", c.failed)
	}
	return nil
}

// serveHTTP stands in for nginx: a small HTTP server on port 80 inside the pod.
func serveHTTP(p *lab.Pod) (func(), error) {
	l, err := p.NS.Listen("tcp", ":80")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", p.Name)
	}), ReadHeaderTimeout: 5 * time.Second}
	// Serve returns ErrServerClosed when the demo stops it; nothing to report.
	go srv.Serve(l)
	return func() { srv.Close() }, nil
}

func httpGet(ctx context.Context, from *lab.Pod, addr string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return from.NS.Dial(ctx, network, a) },
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func section(title string) { fmt.Printf("\n=== %s\n", title) }

// checks counts what the demo showed failing, so `make demo` exits non-zero when nodenet is broken.
type checks struct{ failed int }

func (c *checks) report(what string, err error) {
	if err != nil {
		c.failed++
		fmt.Printf("FAIL %s: %v\n", what, err)
		return
	}
	fmt.Printf("ok   %s\n", what)
}
