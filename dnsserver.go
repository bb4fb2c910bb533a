package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/nodenet/nodenet/dns"
	"github.com/nodenet/nodenet/dns/forward"
	"github.com/nodenet/nodenet/dns/hostnet"
	"github.com/nodenet/nodenet/dns/listen"
	"github.com/nodenet/nodenet/dns/zone"
	"github.com/nodenet/nodenet/hub"
)

// dnsPort is where pods send their queries: the resolv.conf kubelet writes names no port.
const dnsPort = 53

// startDNS starts the node-local DNS server in the node's namespace (nodeNS, a descriptor): the
// address on its interface, the NOTRACK rules, the sockets (from the keeper when one holds them),
// the zone fed by the hub (changes through programmed once the proxy has them, when it runs),
// the forwarder and the server. It returns a function that re-ensures
// the interface and rules, for the daemon's periodic check, and one that closes the daemon's
// copies of the sockets once the server has stopped (the keeper keeps its own, with every query
// that arrives until the next daemon reads them).
func (d *daemon) startDNS(ctx context.Context, bg *errgroup.Group, h *hub.Hub, nl *netlink.Handle, nodeNS int, reg prometheus.Registerer, programmed *hub.ServiceChanges) (ensure func() error, closeSockets func(), err error) {
	log := d.log.Named("dns")
	addrs := d.cfg.DNS.Listen
	nft, err := nftables.New(nftables.WithNetNSFd(nodeNS))
	if err != nil {
		return nil, nil, fmt.Errorf("open nftables: %w", err)
	}
	ensure = func() error {
		mode, err := hostnet.EnsureInterface(nl, addrs)
		if err != nil {
			return fmt.Errorf("dns interface: %w", err)
		}
		if _, err := hostnet.EnsureNotrack(nft, addrs, dnsPort); err != nil {
			return fmt.Errorf("dns notrack rules: %w", err)
		}
		log.Debug("dns address in place", zap.Stringer("mode", mode))
		return nil
	}
	if err := ensure(); err != nil {
		return nil, nil, err
	}

	upstreams := d.cfg.DNSUpstreams()
	if len(upstreams) == 0 {
		if upstreams, err = forward.UpstreamsFromResolvConf(d.cfg.DNS.ResolvConf, addrs); err != nil {
			return nil, nil, fmt.Errorf("dns.upstreams is empty and %w", err)
		}
	}
	fwd, err := forward.New(forward.Config{Upstreams: upstreams, CacheSize: d.cfg.DNS.CacheSize, Log: log, Registerer: reg})
	if err != nil {
		return nil, nil, err
	}

	z := zone.New(zone.Config{Domain: d.cfg.ClusterDomain, TTL: uint32(*d.cfg.DNS.TTL), Nameservers: addrs})
	ready := make(chan struct{})

	sockets, err := listen.Open(ctx, listen.Config{
		Addrs: addrs, Port: dnsPort, KeeperSocket: filepath.Join(d.cfg.RunDir, "dns-keeper.sock"), Log: log,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("open DNS sockets: %w", err)
	}
	srv, err := dns.New(dns.Config{
		Zone: z, Forwarder: fwd, UDP: sockets.UDP, TCP: sockets.TCP, Ready: ready, Registerer: reg, Log: d.log,
	})
	if err != nil {
		sockets.Close()
		return nil, nil, err
	}
	bg.Go(func() error { return dns.Feed(ctx, h, z, ready, programmed, log) })
	bg.Go(func() error { return fwd.Run(ctx) })
	served := make(chan struct{})
	bg.Go(func() error {
		defer close(served)
		return srv.Run(ctx)
	})
	log.Info("node-local DNS starting", zap.Stringers("listen", addrs), zap.Stringers("upstreams", upstreams), zap.String("zone", z.Origin()))
	return ensure, func() {
		// Answers in progress go out on these sockets: close them only after the server stopped.
		<-served
		if err := sockets.Close(); err != nil {
			log.Warn("close DNS sockets", zap.Error(err))
		}
	}, nil
}
