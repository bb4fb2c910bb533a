// Package hub is the daemon's one view of the cluster: one informer per kind of object, whose
// event handlers only record that something changed and poke the components that care. The
// components then read consistent snapshots from the informers' caches. Each component owns its
// goroutine; the hub never calls into them.
package hub

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"
)

// VTEPMACAnnotation is where each daemon publishes the MAC of its VXLAN device on its own Node,
// so peers can build their forwarding entries towards it.
const VTEPMACAnnotation = "nodenet.dev/vtep-mac"

// Node is what the components need of a Node object.
type Node struct {
	Name        string
	InternalIPs []netip.Addr // status.addresses of type InternalIP, in the order the kubelet gave them
	PodCIDRs    []netip.Prefix
	VTEPMAC     net.HardwareAddr
	Zone        string // topology.kubernetes.io/zone, for topology-aware routing of Services
	// Leaving: the Node is being deleted, or the cluster autoscaler has tainted it
	// ToBeDeletedByClusterAutoscaler; load balancers should stop sending it traffic.
	Leaving bool
}

// toBeDeletedTaint is the taint the cluster autoscaler puts on a Node it is about to remove.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// API lists and watches the objects the hub caches (kubeapi.Client).
type API interface {
	Nodes() cache.ListerWatcher
	Services() cache.ListerWatcher
	EndpointSlices() cache.ListerWatcher
}

// Hub starts the informers and fans change notifications out to subscribers.
type Hub struct {
	informers []cache.SharedIndexInformer
	nodes     cache.Store // *corev1.Node, stripped
	// The Node cache, which is all routing needs: its handler registration, done once the
	// handler has seen the initial list.
	nodesSynced cache.DoneChecker
	log         *zap.Logger

	services       cache.Indexer // *Service, by namespace/name
	slices         *slicesByService
	servicesSynced []cache.DoneChecker

	mu            sync.Mutex
	subscribers   []chan struct{}
	serviceSubs   []*ServiceChanges
	servicesReady bool // set once, after every subscription was given the full world
}

// New builds the informers; Run starts them.
func New(api API, log *zap.Logger) (*Hub, error) {
	h := &Hub{log: log.Named("hub")}
	nodeInformer := h.informer(api.Nodes(), &corev1.Node{}, cache.Indexers{})
	if err := nodeInformer.SetTransform(stripNode); err != nil {
		return nil, fmt.Errorf("set node transform: %w", err)
	}
	nodeReg, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { h.poke() },
		UpdateFunc: func(old, cur any) { h.nodeUpdated(old, cur) },
		DeleteFunc: func(any) { h.poke() },
	})
	if err != nil {
		return nil, fmt.Errorf("add node handler: %w", err)
	}
	h.nodes = nodeInformer.GetStore()
	h.nodesSynced = nodeReg.HasSyncedChecker()
	if err := h.addServiceInformers(api); err != nil {
		return nil, err
	}
	return h, nil
}

// informer makes an informer of the objects lw lists, with only the given indexes: nothing reads
// the namespace index client-go's informer factory adds to every informer.
func (h *Hub) informer(lw cache.ListerWatcher, obj runtime.Object, indexers cache.Indexers) cache.SharedIndexInformer {
	// No periodic resync: components resync the kernel on their own timers, and a resync of the
	// informers would only replay unchanged objects.
	inf := cache.NewSharedIndexInformer(lw, obj, 0, indexers)
	h.informers = append(h.informers, inf)
	return inf
}

// Subscribe returns a channel that receives a value after every change of a Node that matters. It
// has a buffer of one and sends never block: a subscriber that is busy sees one pending
// notification however many changes happened meanwhile, and then reads the current state. The hub
// never closes it; subscribers stop reading when their context ends.
func (h *Hub) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	h.subscribers = append(h.subscribers, ch)
	h.mu.Unlock()
	return ch
}

func (h *Hub) poke() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ch := range h.subscribers {
		notify(ch)
	}
}

// nodeUpdated ignores the kubelet's heartbeat-only updates (conditions, images), which would
// otherwise wake every component every few seconds on every node of a large cluster.
func (h *Hub) nodeUpdated(old, cur any) {
	o, ok1 := old.(*corev1.Node)
	c, ok2 := cur.(*corev1.Node)
	if ok1 && ok2 && nodeEqual(toNode(o), toNode(c)) {
		return
	}
	h.poke()
}

// Run starts the informers and blocks until ctx ends. Node and Service caches sync independently:
// a daemon whose identity may not list Services (an older deploy/rbac.yaml) still routes.
func (h *Hub) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, inf := range h.informers {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	// The waits return when ctx ends too: a shutdown before the caches filled is not a failure.
	wg.Go(func() {
		if h.WaitForSync(ctx) == nil {
			h.log.Info("node cache synced")
			h.poke()
		}
	})
	wg.Go(func() { h.waitForServices(ctx) })
	<-ctx.Done()
	return nil
}

// NodesSynced reports whether the Node cache holds the initial list; subscribers are poked when
// it does.
func (h *Hub) NodesSynced() bool {
	select {
	case <-h.nodesSynced.Done():
		return true
	default:
		return false
	}
}

// WaitForSync blocks until the Node cache is filled or ctx ends. It waits on the registration's
// channel, not client-go's WaitForCacheSync, which looks every 100 ms: the proxy's first sync
// waits for this.
func (h *Hub) WaitForSync(ctx context.Context) error {
	select {
	case <-h.nodesSynced.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("node cache did not sync: %w", ctx.Err())
	}
}

// Node returns the Node called name; ok is false while the cache does not hold it.
func (h *Hub) Node(name string) (n Node, ok bool) {
	obj, exists, err := h.nodes.GetByKey(name)
	if err != nil || !exists {
		return Node{}, false
	}
	o, isNode := obj.(*corev1.Node)
	if !isNode {
		return Node{}, false
	}
	return toNode(o), true
}

// Nodes returns every Node, sorted by name.
func (h *Hub) Nodes() ([]Node, error) {
	objs := h.nodes.List()
	out := make([]Node, 0, len(objs))
	for _, o := range objs {
		if n, ok := o.(*corev1.Node); ok {
			out = append(out, toNode(n))
		}
	}
	slices.SortFunc(out, func(a, b Node) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out, nil
}

func toNode(o *corev1.Node) Node {
	n := Node{Name: o.Name, Zone: o.Labels[corev1.LabelTopologyZone], Leaving: o.DeletionTimestamp != nil}
	for _, t := range o.Spec.Taints {
		n.Leaving = n.Leaving || t.Key == toBeDeletedTaint
	}
	for _, a := range o.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			n.InternalIPs = append(n.InternalIPs, ip.Unmap())
		}
	}
	cidrs := o.Spec.PodCIDRs
	if len(cidrs) == 0 && o.Spec.PodCIDR != "" {
		cidrs = []string{o.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			n.PodCIDRs = append(n.PodCIDRs, p.Masked())
		}
	}
	if mac, err := net.ParseMAC(o.Annotations[VTEPMACAnnotation]); err == nil {
		n.VTEPMAC = mac
	}
	return n
}

func nodeEqual(a, b Node) bool {
	return a.Name == b.Name && a.Zone == b.Zone && a.Leaving == b.Leaving && slices.Equal(a.InternalIPs, b.InternalIPs) &&
		slices.Equal(a.PodCIDRs, b.PodCIDRs) && a.VTEPMAC.String() == b.VTEPMAC.String()
}

// stripNode keeps what toNode reads and the annotations: a Node's managed fields, images and
// conditions are most of its size, and a daemon caches every Node of the cluster.
func stripNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	n.ManagedFields = nil
	n.Status.Images = nil
	n.Status.Conditions = nil
	n.Status.VolumesAttached = nil
	n.Status.VolumesInUse = nil
	return n, nil
}
