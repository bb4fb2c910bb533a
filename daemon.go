package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/nodenet/nodenet/cniexec"
	"github.com/nodenet/nodenet/config"
	"github.com/nodenet/nodenet/hub"
	"github.com/nodenet/nodenet/ipam"
	"github.com/nodenet/nodenet/routing"
	"github.com/nodenet/nodenet/routing/localports"
)

// ensureInterval is how often the node-local network is re-checked, so a bridge address or an
// nftables rule another program removed comes back without a restart.
const ensureInterval = 30 * time.Second

// shutdownTimeout bounds how long the HTTP servers get to finish their requests.
const shutdownTimeout = 5 * time.Second

type daemon struct {
	cfg      *config.Config
	shimPath string
	log      *zap.Logger
	ready    atomic.Bool
}

// run wires the components and runs them under one errgroup: any failure cancels the rest, then
// the deferred cleanup closes what was opened. Nothing it set up in the kernel is torn down on
// exit, so pods keep their network while the daemon restarts.
func (d *daemon) run(ctx context.Context) error {
	d.log.Info("starting", zap.String("version", version), zap.String("node", d.cfg.NodeName))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.serveHTTP(ctx, d.cfg.Health.Address, d.healthHandler()) })
	g.Go(func() error {
		return d.serveHTTP(ctx, d.cfg.Metrics.Address, metricsHandler(reg))
	})
	g.Go(func() error { return d.runNetwork(ctx, reg) })
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	d.log.Info("stopped", zap.Error(err))
	return err
}

// runNetwork brings up the node's network: the hub's informers and the Service proxy first (they
// need neither the pod ranges nor routes), then podCIDRs, IPAM, routes to other nodes, DNS, the
// bridge, reconciliation, the CNI socket, and finally the shim and conflist that tell the runtime
// nodenet is ready. Long-running parts run in bg; everything opened here is closed only after bg
// has stopped, so no request or sync runs on a closed handle.
func (d *daemon) runNetwork(ctx context.Context, reg prometheus.Registerer) error {
	// What the background parts use (IPAM by the CNI server, the DNS sockets by the DNS server,
	// conntrack by the proxy) is closed by these, deferred first so that they run last: after
	// cancelBG and bg.Wait, also when set-up fails half way with ctx still live.
	var closers []func()
	defer func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}()
	bg, bgCtx := errgroup.WithContext(ctx)
	defer func() {
		if err := bg.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			d.log.Warn("background part stopped", zap.Error(err))
		}
	}()
	bgRun, cancelBG := context.WithCancel(bgCtx)
	defer cancelBG()

	var client kubeAPI
	var h *hub.Hub
	if !d.cfg.Standalone() {
		c, err := newKubeClient(d.cfg.Kubeconfig, d.cfg.APIServer, d.log)
		if err != nil {
			return err
		}
		client = c
		// The hub lists Services, EndpointSlices and Nodes while the node is set up.
		if h, err = hub.New(client, d.log); err != nil {
			return err
		}
		bg.Go(func() error { return h.Run(bgRun) })
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	closers = append(closers, nl.Close)
	nft, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	// The node's namespace, held open for the daemon's life: /proc/self/ns/net names the main
	// thread's namespace, and that thread may be inside a pod's namespace at any moment while a
	// goroutine configures the pod.
	nodeNS, err := netns.Get()
	if err != nil {
		return fmt.Errorf("open the node's network namespace: %w", err)
	}
	closers = append(closers, func() { nodeNS.Close() })
	nodeNetns := fmt.Sprintf("/proc/self/fd/%d", int(nodeNS))

	// With the proxy on, DNS publishes a Service's name once its rules are programmed.
	var programmed *hub.ServiceChanges
	if client != nil && d.cfg.ProxyEnabled() {
		var announce func([]hub.ServiceKey)
		if d.cfg.DNSEnabled() {
			programmed = hub.NewServiceChanges()
			announce = func(keys []hub.ServiceKey) {
				for _, k := range keys {
					programmed.Mark(k)
				}
			}
		}
		// Services depend on neither this node's pod ranges nor its routes: the proxy programs
		// them as soon as the hub's lists are in (and the Nodes', for the node's zone) while the
		// rest is set up.
		stop, err := d.startProxy(bgRun, bg, h, nl, int(nodeNS), reg, announce)
		if err != nil {
			return err
		}
		closers = append(closers, stop)
	}
	podCIDRs, err := d.podCIDRs(ctx, client)
	if err != nil {
		return err
	}
	alloc, err := ipam.Open(ipam.Config{StateDir: d.cfg.StateDir, Ranges: podCIDRs}, d.log)
	if err != nil {
		return fmt.Errorf("open ipam: %w", err)
	}
	closers = append(closers, func() {
		if err := alloc.Close(); err != nil {
			d.log.Warn("close ipam", zap.Error(err))
		}
	})
	mtu := d.cfg.CNI.MTU
	ensureDNS := func() error { return nil }
	if client != nil {
		vtep, err := d.startRouting(bgRun, bg, client, h, nl, podCIDRs)
		if err != nil {
			return err
		}
		mtu = podMTU(d.cfg, vtep)
		if d.cfg.DNSEnabled() {
			ensure, closeSockets, err := d.startDNS(bgRun, bg, h, nl, int(nodeNS), reg, programmed)
			if err != nil {
				return err
			}
			closers = append(closers, closeSockets)
			ensureDNS = ensure
		}
	}
	local, err := routing.NewLocal(routing.LocalConfig{
		Bridge:       d.cfg.CNI.Bridge,
		MTU:          mtu,
		Gateways:     alloc.Gateways(),
		PodCIDRs:     podCIDRs,
		ClusterCIDRs: d.cfg.ClusterCIDRs,
		NodeNetns:    nodeNetns,
	}, nl, nft, d.log)
	if err != nil {
		return err
	}
	bridge, err := local.Ensure()
	if err != nil {
		return fmt.Errorf("set up bridge %s: %w", d.cfg.CNI.Bridge, err)
	}
	socket := filepath.Join(d.cfg.RunDir, "cni.sock")
	// hostPorts on a loopback hostIP are relayed by sockets of the daemon, in its own namespace,
	// the node's; they close when the daemon stops, and the restarted daemon's Reconcile opens
	// them again.
	relay := localports.New(localports.Config{}, localports.NewMetrics(reg), d.log)
	bg.Go(func() error { return relay.Run(bgRun) })
	hostPorts := routing.NewHostPorts(routing.HostPortsConfig{NetnsFD: int(nodeNS), Relay: relay}, d.log)
	srv, err := cniexec.New(cniexec.Config{Socket: socket, Bridge: bridge, NetworkName: "nodenet", HostPorts: hostPorts},
		alloc, local, cniexec.NewMetrics(reg), d.log)
	if err != nil {
		return err
	}
	bg.Go(func() error { return srv.Run(bgRun) })
	if err := srv.Reconcile(); err != nil {
		// A leftover that cannot be removed now is retried on the next start; it must not keep
		// every new pod on this node from starting.
		d.log.Error("reconcile left work undone", zap.Error(err))
	}
	if err := d.install(socket); err != nil {
		return err
	}
	srv.SetReady()
	d.ready.Store(true)
	d.log.Info("ready", zap.Stringers("podCIDRs", podCIDRs), zap.String("bridge", bridge.Name), zap.Int("mtu", bridge.MTU))

	ticker := time.NewTicker(ensureInterval)
	defer ticker.Stop()
	for {
		select {
		case <-bgRun.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return bg.Wait()
		case <-ticker.C:
			if _, err := local.Ensure(); err != nil {
				d.log.Error("re-ensure node network", zap.Error(err))
			}
			if err := hostPorts.Ensure(); err != nil {
				d.log.Error("re-ensure hostPort mappings", zap.Error(err))
			}
			if err := ensureDNS(); err != nil {
				d.log.Error("re-ensure node-local DNS address", zap.Error(err))
			}
		}
	}
}

// startRouting sets up the routes to other nodes' pods: the VXLAN device (its MAC published on
// this Node for peers) and the loop that follows Node changes.
func (d *daemon) startRouting(ctx context.Context, bg *errgroup.Group, client kubeAPI, h *hub.Hub, nl *netlink.Handle, podCIDRs []netip.Prefix) (routing.VTEP, error) {
	var addr netip.Addr
	if err := retry(ctx, d.log, "read this node's InternalIP", func() (err error) {
		addr, err = nodeAddress(ctx, client, d.cfg.NodeName)
		return err
	}); err != nil {
		return routing.VTEP{}, err
	}
	overlay, err := routing.NewOverlay(routing.OverlayConfig{Mode: d.cfg.Routing.Mode, LocalAddress: addr, PodCIDRs: podCIDRs}, nl, d.log)
	if err != nil {
		return routing.VTEP{}, err
	}
	vtep, err := overlay.Ensure()
	if err != nil {
		return routing.VTEP{}, fmt.Errorf("set up routing to other nodes: %w", err)
	}
	if err := retry(ctx, d.log, "publish the VXLAN device on this Node", func() error {
		return publishVTEP(ctx, client, d.cfg.NodeName, vtep)
	}); err != nil {
		return routing.VTEP{}, err
	}
	syncer := &routeSyncer{hub: h, overlay: overlay, self: d.cfg.NodeName, family: addr, changes: h.Subscribe(),
		log: d.log.Named("routes"), ownCIDRs: podCIDRs, cidrsFromAPI: len(d.cfg.PodCIDRs) == 0}
	bg.Go(func() error { return syncer.run(ctx) })
	return vtep, nil
}

func (d *daemon) install(socket string) error {
	if err := cniexec.InstallShim(d.shimPath, d.cfg.CNI.BinDir); err != nil {
		return fmt.Errorf("install %s into %s: %w", cniexec.ShimName, d.cfg.CNI.BinDir, err)
	}
	// Runtimes run the loopback plugin for every pod sandbox; nodenet-cni serves as one where the
	// node has none.
	lo, err := cniexec.InstallLoopback(d.cfg.CNI.BinDir)
	if err != nil {
		return fmt.Errorf("install the loopback plugin into %s: %w", d.cfg.CNI.BinDir, err)
	}
	d.log.Info("CNI loopback plugin", zap.String("action", string(lo.Action)), zap.String("found", lo.Found),
		zap.String("path", lo.Path))
	list, err := cniexec.Conflist("nodenet", socket, filepath.Join(d.cfg.RunDir, "cni.log"))
	if err != nil {
		return fmt.Errorf("encode conflist: %w", err)
	}
	if err := cniexec.WriteConflist(d.cfg.CNI.ConfDir, list); err != nil {
		return fmt.Errorf("write conflist into %s: %w", d.cfg.CNI.ConfDir, err)
	}
	return nil
}

// podCIDRs are the config's, else the Node's spec.podCIDRs once the controller assigned them.
func (d *daemon) podCIDRs(ctx context.Context, client kubeAPI) ([]netip.Prefix, error) {
	if len(d.cfg.PodCIDRs) > 0 {
		return d.cfg.PodCIDRs, nil
	}
	return waitForPodCIDRs(ctx, client, d.cfg.NodeName, d.log)
}

func (d *daemon) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// listenRetry is how often serveUntilDone tries again to listen on an address that is taken.
const listenRetry = 5 * time.Second

// serveUntilDone serves h on addr until ctx ends, like serveHTTP, but a port it cannot listen on
// stops nothing else: it says so and tries again every retry (listenRetry). kube-proxy's health port is
// still taken while kube-proxy runs on a node being moved to nodenet, and pods must get their
// network all the same.
func (d *daemon) serveUntilDone(ctx context.Context, what, addr string, h http.Handler, retry time.Duration) {
	warned := ""
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			if warned != "" {
				d.log.Info("serving "+what+" now", zap.String("address", addr))
			}
			warned = ""
			err = d.serveListener(ctx, l, h)
		}
		if ctx.Err() != nil {
			return
		}
		log := d.log.Debug // the same failure again: said already
		if msg := err.Error(); msg != warned {
			log, warned = d.log.Warn, msg
		}
		log("cannot serve "+what+"; trying again", zap.String("address", addr), zap.Duration("every", retry), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// serveHTTP serves h on addr until ctx ends.
func (d *daemon) serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return d.serveListener(ctx, l, h)
}

// serveListener serves h on l until ctx ends.
func (d *daemon) serveListener(ctx context.Context, l net.Listener, h http.Handler) error {
	addr := l.Addr().String()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	shutDown := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shutDown)
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			d.log.Warn("shut down HTTP server", zap.String("address", addr), zap.Error(err))
		}
	})
	err := srv.Serve(l)
	if !errors.Is(err, http.ErrServerClosed) {
		stop()
		return fmt.Errorf("serve %s: %w", addr, err)
	}
	// Serve returns as soon as Shutdown starts; wait for it to finish the requests in flight.
	<-shutDown
	return nil
}
