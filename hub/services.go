package hub

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
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

// addServiceInformers adds the Service and EndpointSlice informers. Their events mark Service
// keys in every ServiceChanges subscription.
func (h *Hub) addServiceInformers(api API) error {
	svcInformer := h.informer(withCompactList(api.Services(), toService), &corev1.Service{}, cache.Indexers{})
	if err := svcInformer.SetTransform(toService); err != nil {
		return fmt.Errorf("set service transform: %w", err)
	}
	svcReg, err := svcInformer.AddEventHandler(changeMarker{mark: h.markService, log: h.log})
	if err != nil {
		return fmt.Errorf("add service handler: %w", err)
	}

	sliceInformer := h.informer(withCompactList(api.EndpointSlices(), toEndpointSlice), &discoveryv1.EndpointSlice{}, cache.Indexers{})
	if err := sliceInformer.SetTransform(toEndpointSlice); err != nil {
		return fmt.Errorf("set endpointslice transform: %w", err)
	}
	h.slices = newSlicesByService()
	sliceReg, err := sliceInformer.AddEventHandler(sliceTracker{slices: h.slices, marker: changeMarker{mark: h.markService, log: h.log}})
	if err != nil {
		return fmt.Errorf("add endpointslice handler: %w", err)
	}

	h.services = svcInformer.GetIndexer()
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

// toService and toEndpointSlice are the informers' transforms. They leave alone what they do not
// convert: an object converted already (the initial list goes through the transform twice) and
// deletion tombstones.
func toService(obj any) (any, error) {
	if s, ok := obj.(*corev1.Service); ok {
		return ServiceOf(s), nil
	}
	return obj, nil
}

func toEndpointSlice(obj any) (any, error) {
	if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
		return EndpointSliceOf(s), nil
	}
	return obj, nil
}

// cachedObject is a Service or an EndpointSlice as the hub caches it.
type cachedObject interface {
	GetResourceVersion() string
	// concerns names the Service whose rules and names depend on the object, if any.
	concerns() (ServiceKey, bool)
	// changedAt is when the change that led to this version happened; zero when unknown.
	changedAt() time.Time
}

func (s *Service) concerns() (ServiceKey, bool) {
	return ServiceKey{Namespace: s.Namespace, Name: s.Name}, true
}

func (s *Service) changedAt() time.Time { return time.Time{} }

// concerns is the Service the slice belongs to.
func (s *EndpointSlice) concerns() (ServiceKey, bool) {
	if s.Service == "" {
		return ServiceKey{}, false
	}
	return ServiceKey{Namespace: s.Namespace, Name: s.Service}, true
}

func (s *EndpointSlice) changedAt() time.Time { return s.TriggerTime }

// changeMarker turns informer events into marks of the Service they concern.
type changeMarker struct {
	mark func(ServiceKey, time.Time)
	log  *zap.Logger
}

// OnAdd ignores the trigger time of objects in the initial list: they changed before the daemon
// started, and a latency measured from then would count the daemon's own start-up.
func (m changeMarker) OnAdd(obj any, isInInitialList bool) {
	o, ok := obj.(cachedObject)
	if !ok {
		return
	}
	var t time.Time
	if !isInInitialList {
		t = o.changedAt()
	}
	m.markOf(o, t)
}

// OnUpdate skips updates that did not change the object: an informer relist replays every object
// it still has as an update.
func (m changeMarker) OnUpdate(oldObj, newObj any) {
	old, ok1 := oldObj.(cachedObject)
	cur, ok2 := newObj.(cachedObject)
	if !ok1 || !ok2 || old.GetResourceVersion() == cur.GetResourceVersion() {
		return
	}
	t := cur.changedAt()
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
	o, ok := obj.(cachedObject)
	if !ok {
		m.log.Warn("deletion of an object of unexpected type", zap.String("type", fmt.Sprintf("%T", obj)))
		return
	}
	m.markOf(o, time.Time{})
}

func (m changeMarker) markOf(o cachedObject, t time.Time) {
	if key, ok := o.concerns(); ok {
		m.mark(key, t)
	}
}

// Service returns the Service of key as the hub cached it. It is shared with the cache and every
// other reader: callers must not modify it.
func (h *Hub) Service(key ServiceKey) (*Service, bool, error) {
	obj, ok, err := h.services.GetByKey(key.String())
	if err != nil {
		return nil, false, fmt.Errorf("get service %s: %w", key, err)
	}
	svc, isService := obj.(*Service)
	return svc, ok && isService, nil
}

// EndpointSlices returns the EndpointSlices owned by the Service of key, sorted by name, whether
// or not that Service exists. They are shared with the cache and every other reader: callers must
// not modify them.
func (h *Hub) EndpointSlices(key ServiceKey) []*EndpointSlice {
	return h.slices.of(key)
}

// ServiceKeys returns, sorted and once each, the key of every Service and of every Service that
// EndpointSlices name, existing or not: a full sync walks these.
func (h *Hub) ServiceKeys() []ServiceKey {
	svcs := h.services.List()
	keys := h.slices.services()
	for _, o := range svcs {
		if s, ok := o.(*Service); ok {
			keys = append(keys, ServiceKey{Namespace: s.Namespace, Name: s.Name})
		}
	}
	slices.SortFunc(keys, compareKeys)
	return slices.Compact(keys)
}
