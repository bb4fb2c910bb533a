package hub

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// ServiceKey names a Service. It has the fields of proxy.ServiceKey in the same order, so the
// proxy converts it without the hub depending on the proxy.
type ServiceKey struct {
	Namespace, Name string
}

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

func compareKeys(a, b ServiceKey) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// byService indexes EndpointSlices by the ServiceKey.String() of the Service that owns them.
const byService = "service"

// addServiceInformers registers the Service and EndpointSlice informers on the shared factory.
// Their events mark Service keys in every ServiceChanges subscription.
func (h *Hub) addServiceInformers(factory informers.SharedInformerFactory) error {
	svcInformer := factory.Core().V1().Services()
	if err := svcInformer.Informer().SetTransform(stripService); err != nil {
		return fmt.Errorf("set service transform: %w", err)
	}
	svcReg, err := svcInformer.Informer().AddEventHandler(h.marker(serviceKeyOf))
	if err != nil {
		return fmt.Errorf("add service handler: %w", err)
	}

	sliceInformer := factory.Discovery().V1().EndpointSlices().Informer()
	if err := sliceInformer.SetTransform(stripEndpointSlice); err != nil {
		return fmt.Errorf("set endpointslice transform: %w", err)
	}
	if err := sliceInformer.AddIndexers(cache.Indexers{byService: indexByService}); err != nil {
		return fmt.Errorf("add endpointslice index: %w", err)
	}
	sliceReg, err := sliceInformer.AddEventHandler(h.marker(sliceOwner))
	if err != nil {
		return fmt.Errorf("add endpointslice handler: %w", err)
	}

	h.services = svcInformer.Lister()
	h.slices = sliceInformer.GetIndexer()
	// The registrations, not the informers: they also wait until the handlers have seen the
	// initial list, so the full-world mark that follows comes after every initial event.
	h.servicesSynced = []cache.DoneChecker{svcReg.HasSyncedChecker(), sliceReg.HasSyncedChecker()}
	return nil
}

// waitForServices marks the full world in every subscription once the Service and EndpointSlice
// caches have synced. It waits on the registrations' channels rather than polling them, as
// cache.WaitForCacheSync does every 100 ms: that poll would be most of a small cluster's cold
// start. A shutdown before the caches filled is not a failure.
func (h *Hub) waitForServices(ctx context.Context) {
	for _, c := range h.servicesSynced {
		select {
		case <-c.Done():
		case <-ctx.Done():
			return
		}
	}
	h.log.Info("service and endpointslice caches synced")
	h.markWorld()
}

func serviceKeyOf(o metav1.Object) (ServiceKey, bool) {
	return ServiceKey{Namespace: o.GetNamespace(), Name: o.GetName()}, true
}

// sliceOwner is the Service an EndpointSlice belongs to. Slices without the label are managed by
// someone else for their own purpose and never feed a Service.
func sliceOwner(o metav1.Object) (ServiceKey, bool) {
	name := o.GetLabels()[discoveryv1.LabelServiceName]
	if name == "" {
		return ServiceKey{}, false
	}
	return ServiceKey{Namespace: o.GetNamespace(), Name: name}, true
}

func indexByService(obj any) ([]string, error) {
	o, ok := obj.(metav1.Object)
	if !ok {
		return nil, nil
	}
	if key, ok := sliceOwner(o); ok {
		return []string{key.String()}, nil
	}
	return nil, nil
}

// lastAppliedAnnotation is kubectl's copy of the whole object, often its largest part.
const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// stripService keeps what the proxy reads. Status conditions, managed fields and kubectl's
// last-applied copy would otherwise be cached for every Service of the cluster on every node.
func stripService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	annotations := s.Annotations
	if _, ok := annotations[lastAppliedAnnotation]; ok {
		annotations = maps.Clone(annotations)
		delete(annotations, lastAppliedAnnotation)
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:            s.Name,
			Namespace:       s.Namespace,
			UID:             s.UID,
			ResourceVersion: s.ResourceVersion,
			Labels:          s.Labels,
			Annotations:     annotations,
		},
		Spec:   s.Spec,
		Status: corev1.ServiceStatus{LoadBalancer: s.Status.LoadBalancer},
	}, nil
}

// stripEndpointSlice drops managed fields, the owner reference (to the Service, which the
// service-name label names) and each endpoint's reference to its pod and deprecated topology: a
// node caches every slice of the cluster, and at 100,000 endpoints the references alone are tens
// of megabytes nobody reads. The endpoints are copied to a list of their own length: the decoder
// grows it by doubling, which leaves a third of it unused on average.
func stripEndpointSlice(obj any) (any, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	s.ManagedFields = nil
	s.OwnerReferences = nil
	if cap(s.Endpoints) > len(s.Endpoints) {
		s.Endpoints = slices.Clone(s.Endpoints)
	}
	for i := range s.Endpoints {
		s.Endpoints[i].TargetRef = nil
		s.Endpoints[i].DeprecatedTopology = nil
	}
	return s, nil
}

// changeMarker turns informer events into marks of the Service they concern.
type changeMarker struct {
	keyOf func(metav1.Object) (ServiceKey, bool)
	mark  func(ServiceKey, time.Time)
	log   *zap.Logger
}

func (h *Hub) marker(keyOf func(metav1.Object) (ServiceKey, bool)) changeMarker {
	return changeMarker{keyOf: keyOf, mark: h.markService, log: h.log}
}

// OnAdd ignores the trigger time of objects in the initial list: they changed before the daemon
// started, and a latency measured from then would count the daemon's own start-up.
func (m changeMarker) OnAdd(obj any, isInInitialList bool) {
	o, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	var t time.Time
	if !isInInitialList {
		t = triggerTime(o)
	}
	m.markOf(o, t)
}

// OnUpdate skips updates that did not change the object: an informer relist replays every object
// it still has as an update.
func (m changeMarker) OnUpdate(oldObj, newObj any) {
	old, ok1 := oldObj.(metav1.Object)
	cur, ok2 := newObj.(metav1.Object)
	if !ok1 || !ok2 || old.GetResourceVersion() == cur.GetResourceVersion() {
		return
	}
	t := triggerTime(cur)
	// A slice whose service-name label changed leaves one Service and joins another.
	m.markOf(old, t)
	m.markOf(cur, t)
}

// OnDelete gives no trigger time: a deleted object's annotation dates its last update, not its
// deletion.
func (m changeMarker) OnDelete(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	o, ok := obj.(metav1.Object)
	if !ok {
		m.log.Warn("deletion of an object of unexpected type", zap.String("type", fmt.Sprintf("%T", obj)))
		return
	}
	m.markOf(o, time.Time{})
}

func (m changeMarker) markOf(o metav1.Object, t time.Time) {
	if key, ok := m.keyOf(o); ok {
		m.mark(key, t)
	}
}

// triggerTime is when the change that led to this version of the object happened, as the
// endpoint controllers record it; zero when unknown.
func triggerTime(o metav1.Object) time.Time {
	v, ok := o.GetAnnotations()[corev1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}
	}
	return t
}

// Service returns the Service of key as the informer cached it. It is shared with the cache and
// every other reader: callers must not modify it.
func (h *Hub) Service(key ServiceKey) (*corev1.Service, bool, error) {
	svc, err := h.services.Services(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("get service %s: %w", key, err)
	}
	return svc, true, nil
}

// EndpointSlices returns the EndpointSlices owned by the Service of key, sorted by name, whether
// or not that Service exists. They are shared with the cache and every other reader: callers must
// not modify them.
func (h *Hub) EndpointSlices(key ServiceKey) ([]*discoveryv1.EndpointSlice, error) {
	objs, err := h.slices.ByIndex(byService, key.String())
	if err != nil {
		return nil, fmt.Errorf("endpointslices of %s: %w", key, err)
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// ServiceKeys returns, sorted and once each, the key of every Service and of every Service that
// EndpointSlices name, existing or not: a full sync walks these.
func (h *Hub) ServiceKeys() ([]ServiceKey, error) {
	svcs, err := h.services.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	owners := h.slices.ListIndexFuncValues(byService)
	keys := make([]ServiceKey, 0, len(svcs)+len(owners))
	for _, s := range svcs {
		keys = append(keys, ServiceKey{Namespace: s.Namespace, Name: s.Name})
	}
	for _, o := range owners {
		ns, name, err := cache.SplitMetaNamespaceKey(o)
		if err != nil {
			return nil, fmt.Errorf("endpointslice index value %q: %w", o, err)
		}
		keys = append(keys, ServiceKey{Namespace: ns, Name: name})
	}
	slices.SortFunc(keys, compareKeys)
	return slices.Compact(keys), nil
}
