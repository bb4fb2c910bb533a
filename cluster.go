package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/nodenet/nodenet/config"
	"github.com/nodenet/nodenet/hub"
	"github.com/nodenet/nodenet/routing"
)

// routeResyncInterval bounds how long a route another program removed stays missing.
const routeResyncInterval = 10 * time.Second

// retry runs f until it succeeds or ctx ends, logging each failure: the API server may be
// restarting, or the Node not yet complete (a cloud provider sets its addresses), and a daemon that
// exits instead would crash-loop the whole node's networking.
func retry(ctx context.Context, log *zap.Logger, what string, f func() error) error {
	delay := 500 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		log.Warn(what+"; retrying", zap.Error(err), zap.Duration("in", delay))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// nodeAddress is this node's underlay address: its Node's first InternalIP, the address kubelet
// reports and the one peers route to.
func nodeAddress(ctx context.Context, client kubeAPI, nodeName string) (netip.Addr, error) {
	node, err := client.GetNode(ctx, nodeName)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("get node %s: %w", nodeName, err)
	}
	for _, a := range node.Status.Addresses {
		if a.Type != "InternalIP" {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			return ip.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s has no InternalIP in status.addresses (the kubelet sets it; --node-ip chooses it)", nodeName)
}

// publishVTEP records this node's VXLAN device MAC on its own Node so peers can reach it. A merge
// patch of one annotation touches nothing else of the object.
func publishVTEP(ctx context.Context, client kubeAPI, nodeName string, vtep routing.VTEP) error {
	value := ""
	if vtep.MAC != nil {
		value = vtep.MAC.String()
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{hub.VTEPMACAnnotation: nullIfEmpty(value)}}})
	if err != nil {
		return err
	}
	if err := client.PatchNode(ctx, nodeName, patch); err != nil {
		return fmt.Errorf("annotate node %s with %s: %w", nodeName, hub.VTEPMACAnnotation, err)
	}
	return nil
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil // a merge patch removes the key
	}
	return s
}

// routeSyncer keeps the routes to other nodes' pods in step with the Node objects: every change
// the hub reports, and a periodic resync that restores what another program removed.
type routeSyncer struct {
	hub     *hub.Hub
	overlay *routing.Overlay
	self    string
	family  netip.Addr
	changes <-chan struct{}
	log     *zap.Logger
	// ownCIDRs are the pod ranges IPAM serves. When they came from the Node (not the config), a
	// different spec.podCIDRs on this Node (deleted and re-registered) stops the daemon, so it
	// restarts on the new range instead of handing out addresses peers no longer route here.
	ownCIDRs     []netip.Prefix
	cidrsFromAPI bool
	lastSeen     string
}

// syncWarnInterval is how often a still-unsynced informer cache is reported.
const syncWarnInterval = 30 * time.Second

func (r *routeSyncer) run(ctx context.Context) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, syncWarnInterval)
		err := r.hub.WaitForSync(wctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.log.Warn("Node informer has not synced yet: no routes to other nodes until it does (can the daemon list and watch nodes?)")
	}
	ticker := time.NewTicker(routeResyncInterval)
	defer ticker.Stop()
	for {
		if err := r.sync(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.changes:
		case <-ticker.C:
		}
	}
}

func (r *routeSyncer) sync() error {
	nodes, err := r.hub.Nodes()
	if err != nil {
		r.log.Error("list nodes", zap.Error(err))
		return nil
	}
	peers := make([]routing.Peer, 0, len(nodes))
	for _, n := range nodes {
		if n.Name == r.self {
			if r.cidrsFromAPI && len(n.PodCIDRs) > 0 && !slices.Equal(n.PodCIDRs, r.ownCIDRs) {
				return fmt.Errorf("this Node's spec.podCIDRs changed from %v to %v: restarting to serve the new range", r.ownCIDRs, n.PodCIDRs)
			}
			continue
		}
		peers = append(peers, routing.Peer{Name: n.Name, Address: pickAddress(n.InternalIPs, r.family), PodCIDRs: n.PodCIDRs, VTEPMAC: n.VTEPMAC})
	}
	res, err := r.overlay.Sync(peers)
	if err != nil {
		// One bad peer must not keep the others unrouted: Sync applied what it could.
		r.log.Error("sync routes to peers", zap.Error(err), zap.Strings("rejected", res.Rejected))
	}
	summary := fmt.Sprint(res.Direct, res.VXLAN, res.Skipped, res.Rejected)
	if res.Changes > 0 || summary != r.lastSeen {
		r.log.Info("routes to peers", zap.Strings("direct", res.Direct), zap.Strings("vxlan", res.VXLAN),
			zap.Strings("skipped", res.Skipped), zap.Int("changes", res.Changes))
		r.lastSeen = summary
	}
	return nil
}

// pickAddress prefers an address of the same family as this node's own underlay address.
func pickAddress(addrs []netip.Addr, like netip.Addr) netip.Addr {
	for _, a := range addrs {
		if a.Is4() == like.Is4() {
			return a
		}
	}
	if len(addrs) > 0 {
		return addrs[0]
	}
	return netip.Addr{}
}

// podMTU is cni.mtu, else what the routing mode leaves for pods.
func podMTU(cfg *config.Config, vtep routing.VTEP) int {
	if cfg.CNI.MTU != 0 {
		return cfg.CNI.MTU
	}
	return vtep.MTU
}
