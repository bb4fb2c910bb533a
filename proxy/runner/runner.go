// Package runner runs nodenet's Service proxy: it follows the hub's
// Service and EndpointSlice changes, hands them to the Syncer, and keeps
// the health check node ports, the conntrack table and the metrics in step
// with what was programmed.
package runner

import (
	"context"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/hub"
	"github.com/nodenet/nodenet/proxy"
)

// HealthServer serves the health check node ports of
// externalTrafficPolicy: Local Services (proxy/healthcheck).
type HealthServer interface {
	SyncServices(map[proxy.ServiceKey]int32)
	SyncEndpoints(map[proxy.ServiceKey]int)
	SetProxyHealthy(bool)
}

// ConntrackCleaner removes flows to backends that are gone
// (proxy/conntrack).
type ConntrackCleaner interface {
	Clean(proxy.State) (int, error)
}

// ProxyHealth follows whether changes get programmed in time and whether the node is leaving
// the cluster, for kube-proxy's /healthz (healthcheck.ProxyHealth).
type ProxyHealth interface {
	Watch(untaken func() time.Time)
	Queued()
	Updated()
	SetLeaving(bool)
}

// Config is what the runner works with. Health, ProxyHealth and Conntrack may be nil.
type Config struct {
	Hub         *hub.Hub
	Syncer      *proxy.Syncer
	Health      HealthServer
	ProxyHealth ProxyHealth
	Conntrack   ConntrackCleaner
	// Facts is asked for the node facts before the first sync (once the
	// Node cache is filled, or nodeWait passed), at every drift check and
	// when a Node changes: node addresses and zone may change.
	Facts         func() (proxy.Facts, error)
	DriftInterval time.Duration
	// Programmed, when set, is called from the runner's goroutine after every successful sync
	// with the keys of the Services it changed, deleted ones included: their rules are live.
	// It must not block. The DNS server publishes names through it, so that a name resolves
	// only once its Service's rules are in the kernel.
	Programmed func([]hub.ServiceKey)
	Registerer prometheus.Registerer
	Log        *zap.Logger
}

// bigWorld is the number of Services from which a full sync is followed
// by returning freed memory to the system.
const bigWorld = 1000

// fullSyncGCPercent paces the garbage collector through the full syncs of a
// world of pacedWorld Services or more. They keep the whole world's inputs
// live while they stream netlink messages that each live for one batch; at
// the default of 100 the heap grows to twice the live heap before every
// collection, most of the daemon's peak memory at 10,000 Services. At 50 that
// peak is about 15 MB lower, for a cold start's CPU time within the noise of
// the benchmark. A smaller world's heap is small whatever the setting, and
// there the extra collections are what costs: a full sync of 1,000 Services
// took 494 ms at 50 and 388–431 ms at 100 (BenchmarkSyncerColdStart). Drift
// checks keep the default: lowering GOGC starts a collection at once when the
// heap is past the new goal, and most checks have nothing to do.
const (
	fullSyncGCPercent = 50
	pacedWorld        = 5000
)

// forceReadEvery makes every so many drift checks read the tables even if
// the nftables generation says nobody wrote since the last sync.
const forceReadEvery = 10

// Backoff bounds for retrying a failed sync; each retry is a full sync.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

type runner struct {
	Config
	m       *metrics
	changes *hub.ServiceChanges
	// Trigger times of changes not yet programmed, for the programming
	// latency; kept across failed syncs.
	pending map[proxy.ServiceKey]time.Time
	// Keys taken but not yet reported to Programmed; kept across failed syncs.
	unannounced map[hub.ServiceKey]struct{}
	hcPorts     map[proxy.ServiceKey]int32
	local       map[proxy.ServiceKey]int
	synced      bool
	seenSelf    bool // this node's Node has been in the cache
}

// Run syncs until ctx ends. The first sync waits for the hub's first
// notification, which comes once the Service and EndpointSlice caches hold
// the whole cluster: syncing an empty world first would remove every
// Service's rules on each restart.
func Run(ctx context.Context, cfg Config) error {
	r := &runner{Config: cfg, m: newMetrics(cfg.Registerer), changes: cfg.Hub.SubscribeServices(),
		pending: map[proxy.ServiceKey]time.Time{}, unannounced: map[hub.ServiceKey]struct{}{}, hcPorts: map[proxy.ServiceKey]int32{}, local: map[proxy.ServiceKey]int{}}
	r.Log = r.Log.Named("proxy")
	nodes := cfg.Hub.Subscribe()
	drift := time.NewTicker(cfg.DriftInterval)
	defer drift.Stop()
	var retry <-chan time.Time
	backoff := minBackoff
	checks := 0
	if r.ProxyHealth != nil {
		// Changes the loop has not taken count too: a loop stuck elsewhere fails /healthz.
		r.ProxyHealth.Watch(r.changes.PendingSince)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.changes.C():
		case <-retry:
		case <-drift.C:
			if r.synced {
				checks++
				r.refreshFacts()
				r.checkDrift(checks%forceReadEvery == 0)
			}
			continue
		case <-nodes:
			r.refreshLeaving()
			// The node's zone comes from its Node; a change of facts makes the next sync full.
			if !r.synced {
				continue
			}
			r.refreshFacts()
			if !r.Syncer.FullNext() {
				continue
			}
		}
		if !r.synced {
			r.awaitNodes(ctx, nodes)
			r.refreshFacts()
			r.refreshLeaving()
		}
		if r.ProxyHealth != nil {
			// Until a sync succeeds, retries included; the first attempt's time stands.
			r.ProxyHealth.Queued()
		}
		if err := r.sync(); err != nil {
			r.m.failures.Inc()
			r.Log.Error("sync failed; retrying with a full sync", zap.Duration("in", backoff), zap.Error(err))
			if r.Health != nil {
				r.Health.SetProxyHealthy(false)
			}
			retry = time.After(backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		retry, backoff = nil, minBackoff
		if r.Health != nil {
			r.Health.SetProxyHealthy(true)
		}
		if r.ProxyHealth != nil {
			r.ProxyHealth.Updated()
		}
	}
}

// nodeWait bounds how long the first sync waits for the Node cache, which gives the node's zone.
// Without Nodes (RBAC, API trouble) Services are programmed all the same, topology hints ignored
// until the Nodes come.
const nodeWait = 2 * time.Second

// awaitNodes waits, before the first sync, until the Node cache is filled (nodes is poked when
// it is), nodeWait at most.
func (r *runner) awaitNodes(ctx context.Context, nodes <-chan struct{}) {
	timeout := time.After(nodeWait)
	for !r.Hub.NodesSynced() {
		select {
		case <-ctx.Done():
			return
		case <-nodes:
		case <-timeout:
			r.Log.Warn("the Node cache has not synced; programming Services without this node's zone for now", zap.Duration("waited", nodeWait))
			return
		}
	}
}

// refreshLeaving tells ProxyHealth whether this node's Node is leaving the cluster. A Node that
// was in the cache and is gone has left: load balancers must not take the node back while its
// machine is being removed.
func (r *runner) refreshLeaving() {
	if r.ProxyHealth == nil {
		return
	}
	n, ok := r.Hub.Node(r.Syncer.Facts().Node.Name)
	switch {
	case ok:
		r.seenSelf = true
		r.ProxyHealth.SetLeaving(n.Leaving)
	case r.seenSelf:
		r.ProxyHealth.SetLeaving(true)
	}
}

func (r *runner) refreshFacts() {
	f, err := r.Facts()
	if err != nil {
		r.Log.Warn("node facts unavailable; keeping the last ones", zap.Error(err))
		return
	}
	r.Syncer.SetFacts(f)
}

// sync takes the pending changes, converts them and programs them.
func (r *runner) sync() error {
	taken := r.changes.Take()
	changed := make(map[proxy.ServiceKey]proxy.InputSource, len(taken))
	udp := false
	for hk, at := range taken {
		k := proxy.ServiceKey(hk)
		r.unannounced[hk] = struct{}{}
		// Only known times: a change without one measures nothing, and a cold start
		// would otherwise hold every key of the world here.
		if t, ok := r.pending[k]; !at.IsZero() && (!ok || at.Before(t)) {
			r.pending[k] = at
		}
		src, err := r.input(hk)
		if err != nil {
			return err
		}
		changed[k] = src
		if !udp {
			old, _ := r.Syncer.Input(k)
			udp = hasDatagramPort(old.Service) || (src != nil && hasDatagramPort(proxy.ServiceOf(src)))
		}
	}
	if r.Syncer.FullNext() && max(len(changed), r.Syncer.Len()) >= pacedWorld {
		defer paceGC()()
	}
	start := time.Now()
	res, err := r.Syncer.Sync(changed)
	mode := "partial"
	if res.Full {
		mode = "full"
	}
	r.m.duration.WithLabelValues(mode).Observe(time.Since(start).Seconds())
	r.m.objects.WithLabelValues(mode).Add(float64(res.Ops))
	if err != nil {
		return err
	}
	now := time.Now()
	if r.synced {
		for _, t := range r.pending {
			r.m.programming.Observe(now.Sub(t).Seconds())
		}
	}
	// A new map rather than a cleared one, which would keep room for the largest sync so far:
	// the whole world after a cold start.
	r.pending = map[proxy.ServiceKey]time.Time{}
	r.m.lastSync.Set(float64(now.UnixNano()) / 1e9)
	r.m.rejected.Set(float64(len(r.Syncer.Rejected())))
	if res.Ops > 0 || !r.synced {
		// Full syncs are rare (start, changed facts, repairs) and worth a line; a busy cluster
		// makes partial ones several times a second, which the metrics count.
		log := r.Log.Debug
		if res.Full {
			log = r.Log.Info
		}
		log("synced", zap.String("mode", mode), zap.Int("services", res.Services), zap.Int("objects", res.Ops),
			zap.Int("batches", res.Batches), zap.Duration("took", now.Sub(start)))
	}
	r.announce()
	first := !r.synced
	r.synced = true
	r.updateHealth(changed, first || res.Full)
	if r.Conntrack != nil && (udp || first) {
		if n, err := r.Conntrack.Clean(r.Syncer.State(hasDatagramPort)); err != nil {
			r.Log.Warn("conntrack cleanup", zap.Error(err))
		} else if n > 0 {
			r.Log.Debug("deleted stale conntrack flows", zap.Int("flows", n))
		}
	}
	if res.Full && res.Services >= bigWorld {
		// A full sync of a large world allocates several times the memory
		// the proxy keeps afterwards; give it back now rather than over
		// the next minutes, so the node sees the daemon's real size.
		debug.FreeOSMemory()
	}
	return nil
}

// announce reports the Services programmed since the last report.
func (r *runner) announce() {
	if r.Programmed == nil || len(r.unannounced) == 0 {
		return
	}
	keys := make([]hub.ServiceKey, 0, len(r.unannounced))
	for k := range r.unannounced {
		keys = append(keys, k)
	}
	r.unannounced = map[hub.ServiceKey]struct{}{} // not cleared: see pending
	r.Programmed(keys)
}

// input reads one Service and its slices from the hub; nil means the
// proxy has nothing to do for it (deleted, headless, another proxy's).
func (r *runner) input(k hub.ServiceKey) (proxy.InputSource, error) {
	svc, ok, err := r.Hub.Service(k)
	if err != nil || !ok {
		return nil, err
	}
	src, ok := proxy.FromHub(svc, r.Hub.EndpointSlices(k))
	if !ok {
		return nil, nil
	}
	return src, nil
}

func (r *runner) checkDrift(force bool) {
	start := time.Now()
	res, repaired, err := r.Syncer.CheckDrift(force)
	if repaired {
		r.m.duration.WithLabelValues("full").Observe(time.Since(start).Seconds())
		r.m.objects.WithLabelValues("full").Add(float64(res.Ops))
		r.m.repairs.Inc()
	}
	if err != nil {
		r.m.failures.Inc()
		r.Log.Error("drift check failed", zap.Error(err))
		return
	}
	if repaired {
		r.Log.Info("repaired drift", zap.Int("objects", res.Ops))
	}
}

// updateHealth refreshes the health check ports and local endpoint
// counts of the changed Services, or of all after a full sync.
func (r *runner) updateHealth(changed map[proxy.ServiceKey]proxy.InputSource, all bool) {
	if r.Health == nil {
		return
	}
	node := r.Syncer.Facts().Node.Name
	update := func(k proxy.ServiceKey, in *proxy.ServiceInput) {
		delete(r.hcPorts, k)
		delete(r.local, k)
		if in == nil || !in.Service.ExternalLocal {
			return
		}
		for _, p := range in.Service.Ports {
			if p.HealthCheckNodePort > 0 {
				r.hcPorts[k] = p.HealthCheckNodePort
			}
		}
		n := 0
		for _, ep := range in.Endpoints {
			if ep.Ready && ep.NodeName == node {
				n++
			}
		}
		r.local[k] = n
	}
	if all {
		clear(r.hcPorts)
		clear(r.local)
		st := r.Syncer.State(func(svc proxy.Service) bool { return svc.ExternalLocal })
		for _, svc := range st.Services {
			update(svc.Key(), &proxy.ServiceInput{Service: svc, Endpoints: st.Endpoints[svc.Key()]})
		}
	} else {
		for k, src := range changed {
			var in *proxy.ServiceInput
			if src != nil && proxy.ServiceOf(src).ExternalLocal {
				v := src.Input()
				in = &v
			}
			update(k, in)
		}
	}
	r.Health.SyncServices(r.hcPorts)
	r.Health.SyncEndpoints(r.local)
}

// paceGC lowers the collector's GOGC to fullSyncGCPercent and returns the
// function that restores it. It never raises it: a lower GOGC, or GOGC=off
// with a memory limit, stays as the operator set it.
func paceGC() (restore func()) {
	old := debug.SetGCPercent(fullSyncGCPercent)
	if old < fullSyncGCPercent {
		debug.SetGCPercent(old)
		return func() {}
	}
	return func() { debug.SetGCPercent(old) }
}

func hasDatagramPort(s proxy.Service) bool {
	for _, p := range s.Ports {
		if p.Protocol == proxy.UDP || p.Protocol == proxy.SCTP {
			return true
		}
	}
	return false
}
