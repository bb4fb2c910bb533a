package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/nodenet/nodenet/config"
	"github.com/nodenet/nodenet/hub"
	"github.com/nodenet/nodenet/proxy"
	"github.com/nodenet/nodenet/proxy/conntrack"
	"github.com/nodenet/nodenet/proxy/healthcheck"
	"github.com/nodenet/nodenet/proxy/runner"
)

// proxyHealthTimeout is how long a Service change may wait to be programmed before /healthz
// answers 503: kube-proxy's default, twice its 30 s sync period.
const proxyHealthTimeout = time.Minute

// driftInterval is how often the Service rules are compared with the kernel, so that a chain or
// element another program removed comes back without a restart.
const driftInterval = time.Minute

// startProxy starts Service load balancing in the node's namespace (nodeNS, a descriptor),
// reporting the Services it programmed to programmed (nil: nobody listens). The
// returned function closes the health check ports and the conntrack socket; call it after bg
// has stopped.
func (d *daemon) startProxy(ctx context.Context, bg *errgroup.Group, h *hub.Hub, nl *netlink.Handle, nodeNS int, reg prometheus.Registerer, programmed func([]hub.ServiceKey)) (func(), error) {
	nodePortAddrs, err := d.nodePortAddresses(nl)
	if err != nil {
		return nil, err
	}
	facts := func() (proxy.Facts, error) {
		f := proxy.Facts{Node: proxy.Node{Name: d.cfg.NodeName}, ClusterCIDRs: d.cfg.ClusterCIDRs, MasqueradeAll: d.cfg.Proxy.MasqueradeAll}
		addrs, err := d.nodePortAddresses(nl)
		if err != nil {
			return f, err
		}
		f.Node.Addresses = addrs
		if n, ok := h.Node(d.cfg.NodeName); ok {
			f.Node.Zone = n.Zone
		}
		return f, nil
	}
	ct, err := conntrack.New(conntrack.Config{NetNS: nodeNS, Log: d.log, Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("open conntrack: %w", err)
	}
	health := healthcheck.New(d.log, nodePortAddrs, healthcheck.WithRegisterer(reg))
	var proxyHealth runner.ProxyHealth
	if addr := d.cfg.Proxy.HealthzAddress; addr != config.NoHealthz {
		ph := healthcheck.NewProxyHealth(proxyHealthTimeout, reg)
		bg.Go(func() error {
			d.serveUntilDone(ctx, "kube-proxy-compatible /healthz", addr, ph.Handler(), listenRetry)
			return nil
		})
		proxyHealth = ph
	}
	syncer := proxy.NewSyncer(proxy.NewApplier(nodeNS), proxy.Facts{Node: proxy.Node{Name: d.cfg.NodeName}}, d.log)
	bg.Go(func() error {
		return runner.Run(ctx, runner.Config{Hub: h, Syncer: syncer, Health: health, ProxyHealth: proxyHealth, Conntrack: ct, Facts: facts,
			DriftInterval: driftInterval, Programmed: programmed, Registerer: reg, Log: d.log})
	})
	return func() {
		health.Close()
		if err := ct.Close(); err != nil {
			d.log.Warn("close conntrack", zap.Error(err))
		}
	}, nil
}

// nodePortAddresses lists the node's addresses inside proxy.nodePortAddresses; with none
// configured it returns nil, which means every local address, as in kube-proxy. Configured ranges
// that match no address give an empty list: NodePorts answer nowhere, and the log says why.
func (d *daemon) nodePortAddresses(nl *netlink.Handle) ([]netip.Addr, error) {
	if len(d.cfg.Proxy.NodePortAddresses) == 0 {
		return nil, nil
	}
	addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	out := []netip.Addr{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, p := range d.cfg.Proxy.NodePortAddresses {
			if p.Contains(ip) && !slices.Contains(out, ip) {
				out = append(out, ip)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	if len(out) == 0 {
		d.log.Warn("proxy.nodePortAddresses matches no address of this node; NodePorts are not served here",
			zap.Stringers("nodePortAddresses", d.cfg.Proxy.NodePortAddresses))
	}
	return out, nil
}
