package runner

import (
	"context"
	"fmt"
	"os/exec"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/nodenet/nodenet/hub"
	"github.com/nodenet/nodenet/internal/kubetest"
	"github.com/nodenet/nodenet/internal/nstest"
	"github.com/nodenet/nodenet/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const nodeName = "node-a"

func service(name, ip string, etpLocal bool) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "1"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}},
		},
	}
	if etpLocal {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30053
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
	}
	return s
}

func slice(svc, name string, trigger time.Time, addrs ...string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "1",
			Labels:      map[string]string{discoveryv1.LabelServiceName: svc},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To[int32](5353)}},
	}
	for _, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, NodeName: ptr.To(nodeName),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return sl
}

type fakeHealth struct {
	mu        sync.Mutex
	ports     map[proxy.ServiceKey]int32
	endpoints map[proxy.ServiceKey]int
}

func (f *fakeHealth) SyncServices(p map[proxy.ServiceKey]int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ports = maps(p)
}

func (f *fakeHealth) SyncEndpoints(e map[proxy.ServiceKey]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endpoints = maps(e)
}

func (f *fakeHealth) SetProxyHealthy(bool) {}

func maps[V any](m map[proxy.ServiceKey]V) map[proxy.ServiceKey]V {
	out := map[proxy.ServiceKey]V{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

type fakeConntrack struct {
	mu    sync.Mutex
	calls int
}

func (f *fakeConntrack) Clean(proxy.State) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return 0, nil
}

// The runner waits for the caches, programs the whole world once, then
// follows single changes with partial syncs, feeding health checks,
// conntrack cleanup and the metrics.
func TestRunnerFollowsChanges(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireTool(t, "nft")
	node := nstest.NewNS(t)
	trigger := time.Now().Add(-time.Second)
	client := fake.NewClientset(service("dns", "10.96.0.10", false), slice("dns", "dns-1", trigger, "10.244.0.5"),
		service("lb", "10.96.0.11", true), slice("lb", "lb-1", trigger, "10.244.0.6", "10.244.0.7"))
	h, err := hub.New(kubetest.API{Clientset: client}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	syncer := proxy.NewSyncer(proxy.NewApplier(int(node.Fd())), proxy.Facts{}, zaptest.NewLogger(t))
	health, ct := &fakeHealth{}, &fakeConntrack{}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = h.Run(ctx) })
	wg.Go(func() {
		_ = Run(ctx, Config{Hub: h, Syncer: syncer, Health: health, Conntrack: ct, DriftInterval: time.Hour, Registerer: reg,
			Facts: func() (proxy.Facts, error) { return proxy.Facts{Node: proxy.Node{Name: nodeName}}, nil }, Log: zaptest.NewLogger(t)})
	})
	t.Cleanup(func() { cancel(); wg.Wait() })

	// Syncer is owned by the runner's goroutine; the test only reads the
	// metrics and the fakes, which lock.
	eventually(t, "first full sync", func() bool {
		return counter(t, reg, "nodenet_proxy_sync_objects_total", "full") > 0
	})
	eventually(t, "health check port of ns/lb with 2 local endpoints", func() bool {
		health.mu.Lock()
		defer health.mu.Unlock()
		k := proxy.ServiceKey{Namespace: "ns", Name: "lb"}
		return health.ports[k] == 32000 && health.endpoints[k] == 2
	})

	// One endpoint changes: a partial sync, a programming latency sample,
	// a conntrack clean (UDP).
	ct.mu.Lock()
	before := ct.calls
	ct.mu.Unlock()
	sl := slice("lb", "lb-1", time.Now(), "10.244.0.6")
	sl.ResourceVersion = "2"
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "partial sync of the change", func() bool {
		return counter(t, reg, "nodenet_proxy_sync_objects_total", "partial") > 0
	})
	eventually(t, "one local endpoint left", func() bool {
		health.mu.Lock()
		defer health.mu.Unlock()
		return health.endpoints[proxy.ServiceKey{Namespace: "ns", Name: "lb"}] == 1
	})
	if n := testutil.CollectAndCount(reg, "nodenet_proxy_network_programming_duration_seconds"); n != 1 {
		t.Errorf("programming latency histogram: %d series", n)
	}
	ct.mu.Lock()
	if ct.calls <= before {
		t.Errorf("conntrack not cleaned after a UDP endpoint change")
	}
	ct.mu.Unlock()
	var out []byte
	if err := node.Do(func(ns.NetNS) (err error) {
		out, err = exec.Command("nft", "list", "ruleset").CombinedOutput()
		return err
	}); err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	if text := string(out); !strings.Contains(text, "10.244.0.6 . 5353") || strings.Contains(text, "10.244.0.7") {
		t.Errorf("ruleset after the change:\n%s", text)
	}
}

// counter reads a counter of reg by its mode label; of a histogram, its number of samples.
func counter(t *testing.T, reg *prometheus.Registry, name, mode string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "mode" && l.GetValue() == mode {
					if hist := m.GetHistogram(); hist != nil {
						return float64(hist.GetSampleCount())
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPaceGC: a full sync runs at fullSyncGCPercent and gives the collector back its setting; a
// lower setting, or the collector turned off, is left alone.
func TestPaceGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	for _, set := range []int{100, 200, 30, -1} {
		debug.SetGCPercent(set)
		restore := paceGC()
		want := min(set, fullSyncGCPercent)
		if during := debug.SetGCPercent(want); during != want {
			t.Errorf("GOGC %d: %d during the sync, want %d", set, during, want)
		}
		restore()
		if after := debug.SetGCPercent(set); after != set {
			t.Errorf("GOGC %d: %d after the sync", set, after)
		}
	}
}

// The first sync waits for the Node cache, so it already knows the node's zone, and a later change
// of the zone label makes the next sync full at once (not at the next drift check).
func TestRunnerFollowsTheNodesZone(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	self := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, ResourceVersion: "1",
		Labels: map[string]string{corev1.LabelTopologyZone: "zone-1"}}}
	client := fake.NewClientset(self, service("dns", "10.96.0.10", false), slice("dns", "dns-1", time.Now(), "10.244.0.5"))
	// The Nodes come after the Services, as in a large cluster.
	client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		time.Sleep(300 * time.Millisecond)
		return false, nil, nil
	})
	h, err := hub.New(kubetest.API{Clientset: client}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var zones []string // as each Facts call found it
	facts := func() (proxy.Facts, error) {
		f := proxy.Facts{Node: proxy.Node{Name: nodeName}}
		nodes, err := h.Nodes()
		if err != nil {
			return f, err
		}
		for _, n := range nodes {
			if n.Name == nodeName {
				f.Node.Zone = n.Zone
			}
		}
		mu.Lock()
		zones = append(zones, f.Node.Zone)
		mu.Unlock()
		return f, nil
	}
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(zones)
	}
	syncer := proxy.NewSyncer(proxy.NewApplier(int(node.Fd())), proxy.Facts{}, zaptest.NewLogger(t))
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = h.Run(ctx) })
	wg.Go(func() {
		_ = Run(ctx, Config{Hub: h, Syncer: syncer, DriftInterval: time.Hour, Registerer: reg, Facts: facts, Log: zaptest.NewLogger(t)})
	})
	t.Cleanup(func() { cancel(); wg.Wait() })

	eventually(t, "first full sync", func() bool {
		return counter(t, reg, "nodenet_proxy_sync_objects_total", "full") > 0
	})
	if z := seen(); len(z) == 0 || z[0] != "zone-1" {
		t.Fatalf("zones the facts were read with: %q, want zone-1 first", z)
	}
	full := counter(t, reg, "nodenet_proxy_sync_duration_seconds", "full")
	self = self.DeepCopy()
	self.Labels[corev1.LabelTopologyZone] = "zone-2"
	self.ResourceVersion = "2"
	if _, err := client.CoreV1().Nodes().Update(ctx, self, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a full sync with zone-2", func() bool {
		z := seen()
		return z[len(z)-1] == "zone-2" && counter(t, reg, "nodenet_proxy_sync_duration_seconds", "full") > full
	})
}

// fakeProxyHealth keeps what healthcheck.ProxyHealth keeps, without a clock: whether a change
// waits (queued until updated) and whether the node is leaving.
type fakeProxyHealth struct {
	mu              sync.Mutex
	untaken         func() time.Time
	waiting         bool
	queued, updated int
	leaving         bool
}

func (f *fakeProxyHealth) Watch(u func() time.Time) { f.mu.Lock(); f.untaken = u; f.mu.Unlock() }
func (f *fakeProxyHealth) Queued()                  { f.mu.Lock(); f.queued++; f.waiting = true; f.mu.Unlock() }
func (f *fakeProxyHealth) Updated()                 { f.mu.Lock(); f.updated++; f.waiting = false; f.mu.Unlock() }
func (f *fakeProxyHealth) SetLeaving(l bool)        { f.mu.Lock(); f.leaving = l; f.mu.Unlock() }

// read says whether a change waits, taken or not, how many syncs were attempted and whether the
// node is leaving.
func (f *fakeProxyHealth) read() (waiting bool, queued int, leaving bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waiting || f.untaken != nil && !f.untaken().IsZero(), f.queued, f.leaving
}

// kube-proxy's /healthz follows the runner: a change waits from the moment the hub marks it until
// a sync programs it; the node's own Node says whether it is leaving (the cluster autoscaler's
// taint), and a Node gone from the cache has left.
func TestRunnerFeedsProxyHealth(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	self := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, ResourceVersion: "1"}}
	client := fake.NewClientset(self, service("dns", "10.96.0.10", false), slice("dns", "dns-1", time.Now(), "10.244.0.5"))
	h, err := hub.New(kubetest.API{Clientset: client}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	syncer := proxy.NewSyncer(proxy.NewApplier(int(node.Fd())), proxy.Facts{Node: proxy.Node{Name: nodeName}}, zaptest.NewLogger(t))
	reg := prometheus.NewRegistry()
	ph := &fakeProxyHealth{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = h.Run(ctx) })
	wg.Go(func() {
		_ = Run(ctx, Config{Hub: h, Syncer: syncer, ProxyHealth: ph, DriftInterval: time.Hour, Registerer: reg,
			Facts: func() (proxy.Facts, error) { return proxy.Facts{Node: proxy.Node{Name: nodeName}}, nil }, Log: zaptest.NewLogger(t)})
	})
	t.Cleanup(func() { cancel(); wg.Wait() })

	eventually(t, "first full sync, nothing waiting", func() bool {
		waiting, queued, _ := ph.read()
		return counter(t, reg, "nodenet_proxy_sync_objects_total", "full") > 0 && queued > 0 && !waiting
	})
	_, q0, _ := ph.read()
	sl := slice("dns", "dns-1", time.Now(), "10.244.0.6")
	sl.ResourceVersion = "2"
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the change synced, nothing waiting", func() bool {
		waiting, queued, _ := ph.read()
		return queued > q0 && !waiting
	})

	for i, leaving := range []bool{true, false} {
		self = self.DeepCopy()
		self.Spec.Taints = nil
		if leaving {
			self.Spec.Taints = []corev1.Taint{{Key: "ToBeDeletedByClusterAutoscaler", Effect: corev1.TaintEffectNoSchedule}}
		}
		self.ResourceVersion = fmt.Sprint(3 + i)
		if _, err := client.CoreV1().Nodes().Update(ctx, self, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, fmt.Sprintf("leaving: %v", leaving), func() bool {
			_, _, l := ph.read()
			return l == leaving
		})
	}
	if err := client.CoreV1().Nodes().Delete(ctx, nodeName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "leaving once the Node is gone", func() bool {
		_, _, l := ph.read()
		return l
	})
}
