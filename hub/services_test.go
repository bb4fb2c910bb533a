package hub

import (
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/nodenet/nodenet/internal/kubetest"
)

var (
	t1 = time.Date(2026, 5, 1, 10, 0, 0, 100, time.UTC)
	t2 = t1.Add(time.Second)
	t3 = t2.Add(time.Second)

	keyWeb = ServiceKey{"ns", "web"}
	keyAPI = ServiceKey{"ns", "api"}
)

func service(ns, name, rv string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Port: 80}}},
	}
}

// slice is an EndpointSlice of Service owner ("" for none), changed at trigger (zero for none).
func slice(ns, name, owner, rv string, trigger time.Time) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}}},
	}
	if owner != "" {
		s.Labels = map[string]string{discoveryv1.LabelServiceName: owner}
	}
	if !trigger.IsZero() {
		s.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}
	}
	return s
}

// apiMarker feeds API objects to a changeMarker as the informers do: converted for the cache.
type apiMarker struct{ m changeMarker }

func cached(obj any) any {
	switch o := obj.(type) {
	case *corev1.Service:
		return ServiceOf(o)
	case *discoveryv1.EndpointSlice:
		return EndpointSliceOf(o)
	case cache.DeletedFinalStateUnknown:
		return cache.DeletedFinalStateUnknown{Key: o.Key, Obj: cached(o.Obj)}
	}
	return obj
}

func (a apiMarker) OnAdd(obj any, initial bool) { a.m.OnAdd(cached(obj), initial) }
func (a apiMarker) OnUpdate(old, cur any)       { a.m.OnUpdate(cached(old), cached(cur)) }
func (a apiMarker) OnDelete(obj any)            { a.m.OnDelete(cached(obj)) }

// TestServiceMarks feeds events straight to the handlers the informers call, in order, and checks
// what one Take then returns.
func TestServiceMarks(t *testing.T) {
	badTrigger := slice("ns", "web-1", "web", "2", time.Time{})
	badTrigger.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: "yesterday"}
	for _, tc := range []struct {
		name string
		do   func(svc, eps apiMarker)
		want map[ServiceKey]time.Time
	}{
		{"service add", func(svc, _ apiMarker) { svc.OnAdd(service("ns", "web", "1"), false) },
			map[ServiceKey]time.Time{keyWeb: {}}},
		{"service update", func(svc, _ apiMarker) { svc.OnUpdate(service("ns", "web", "1"), service("ns", "web", "2")) },
			map[ServiceKey]time.Time{keyWeb: {}}},
		{"service update, same resourceVersion", func(svc, _ apiMarker) {
			svc.OnUpdate(service("ns", "web", "1"), service("ns", "web", "1"))
		}, nil},
		{"service delete", func(svc, _ apiMarker) { svc.OnDelete(service("ns", "web", "1")) },
			map[ServiceKey]time.Time{keyWeb: {}}},
		{"service delete, tombstone", func(svc, _ apiMarker) {
			svc.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/web", Obj: service("ns", "web", "1")})
		}, map[ServiceKey]time.Time{keyWeb: {}}},
		{"slice add", func(_, eps apiMarker) { eps.OnAdd(slice("ns", "web-1", "web", "1", t1), false) },
			map[ServiceKey]time.Time{keyWeb: t1}},
		{"slice add, initial list: its trigger predates the daemon", func(_, eps apiMarker) {
			eps.OnAdd(slice("ns", "web-1", "web", "1", t1), true)
		}, map[ServiceKey]time.Time{keyWeb: {}}},
		{"slice add, no service-name label", func(_, eps apiMarker) { eps.OnAdd(slice("ns", "mine", "", "1", t1), false) },
			nil},
		{"slice update", func(_, eps apiMarker) {
			eps.OnUpdate(slice("ns", "web-1", "web", "1", t1), slice("ns", "web-1", "web", "2", t2))
		}, map[ServiceKey]time.Time{keyWeb: t2}},
		{"slice update, unparsable trigger", func(_, eps apiMarker) {
			eps.OnUpdate(slice("ns", "web-1", "web", "1", t1), badTrigger)
		}, map[ServiceKey]time.Time{keyWeb: {}}},
		{"slice update, same resourceVersion", func(_, eps apiMarker) {
			eps.OnUpdate(slice("ns", "web-1", "web", "1", t1), slice("ns", "web-1", "web", "1", t2))
		}, nil},
		{"slice update, service-name label changed", func(_, eps apiMarker) {
			eps.OnUpdate(slice("ns", "web-1", "web", "1", t1), slice("ns", "web-1", "api", "2", t2))
		}, map[ServiceKey]time.Time{keyWeb: t2, keyAPI: t2}},
		{"slice update, label removed", func(_, eps apiMarker) {
			eps.OnUpdate(slice("ns", "web-1", "web", "1", t1), slice("ns", "web-1", "", "2", t2))
		}, map[ServiceKey]time.Time{keyWeb: t2}},
		{"slice delete: the trigger dates the last update, not the deletion", func(_, eps apiMarker) {
			eps.OnDelete(slice("ns", "web-1", "web", "1", t1))
		}, map[ServiceKey]time.Time{keyWeb: {}}},
		{"slice delete, tombstone", func(_, eps apiMarker) {
			eps.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/web-1", Obj: slice("ns", "web-1", "web", "1", t1)})
		}, map[ServiceKey]time.Time{keyWeb: {}}},
		{"earliest trigger kept", func(svc, eps apiMarker) {
			svc.OnUpdate(service("ns", "web", "1"), service("ns", "web", "2"))
			eps.OnAdd(slice("ns", "web-1", "web", "3", t2), false)
			eps.OnAdd(slice("ns", "web-2", "web", "4", t1), false)
			eps.OnUpdate(slice("ns", "web-1", "web", "3", t2), slice("ns", "web-1", "web", "5", t3))
			eps.OnDelete(slice("ns", "web-2", "web", "4", t1))
		}, map[ServiceKey]time.Time{keyWeb: t1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(kubetest.API{Clientset: fake.NewClientset()}, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			changes := h.SubscribeServices()
			m := apiMarker{changeMarker{mark: h.markService, log: zap.NewNop()}}
			tc.do(m, m)
			if diff := cmp.Diff(tc.want, changes.Take()); diff != "" {
				t.Errorf("marked (-want +got):\n%s", diff)
			}
			if got := changes.Take(); got != nil {
				t.Errorf("a second Take returned %v, want nothing", got)
			}
		})
	}
}

// takeUntil collects what the subscription reports until key is among it.
func takeUntil(t *testing.T, c *ServiceChanges, key ServiceKey) map[ServiceKey]time.Time {
	t.Helper()
	got := map[ServiceKey]time.Time{}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case <-c.C():
		case <-timeout:
			t.Fatalf("%s not marked; marked: %v", key, got)
		}
		maps.Copy(got, c.Take())
		if _, ok := got[key]; ok {
			return got
		}
	}
}

// TestServiceSync: a subscriber sees nothing before the caches sync, then the whole world once,
// without the trigger times of the initial list; the readers agree with it, and the cache holds
// only what the transforms keep.
func TestServiceSync(t *testing.T) {
	web := service("ns", "web", "")
	web.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	web.Finalizers = []string{"service.kubernetes.io/load-balancer-cleanup"}
	web.Labels = map[string]string{"app": "web"}
	web.Annotations = map[string]string{"example.com/a": "b"}
	web.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.18.0.100"}}
	web.Status.Conditions = []metav1.Condition{{Type: "LoadBalancerReady", Status: metav1.ConditionTrue}}
	web2 := slice("ns", "web-2", "web", "", t2)
	web2.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "endpointslice-controller"}}
	client := fake.NewClientset(
		web, service("ns", "api", ""), service("other", "web", ""),
		web2, slice("ns", "web-1", "web", "", t1),
		slice("ns", "orphan-1", "orphan", "", time.Time{}), // a Service not (or no longer) there
		slice("ns", "mine", "", "", time.Time{}),
	)
	h, err := New(kubetest.API{Clientset: client}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	early := h.SubscribeServices()
	if h.ServicesSynced() {
		t.Error("ServicesSynced before Run")
	}
	runHub(t, h)
	select {
	case <-early.C():
	case <-time.After(10 * time.Second):
		t.Fatal("no notification after the caches synced")
	}
	if !h.ServicesSynced() {
		t.Error("notified before ServicesSynced")
	}
	world := map[ServiceKey]time.Time{keyAPI: {}, keyWeb: {}, {"ns", "orphan"}: {}, {"other", "web"}: {}}
	if diff := cmp.Diff(world, early.Take()); diff != "" {
		t.Errorf("subscribed before sync: marked (-want +got):\n%s", diff)
	}
	late := h.SubscribeServices()
	select {
	case <-late.C():
	default:
		t.Error("a subscription made after sync was not notified")
	}
	if diff := cmp.Diff(world, late.Take()); diff != "" {
		t.Errorf("subscribed after sync: marked (-want +got):\n%s", diff)
	}

	keys := h.ServiceKeys()
	if diff := cmp.Diff([]ServiceKey{keyAPI, {"ns", "orphan"}, keyWeb, {"other", "web"}}, keys); diff != "" {
		t.Errorf("ServiceKeys (-want +got):\n%s", diff)
	}

	got, ok, err := h.Service(keyWeb)
	if err != nil || !ok {
		t.Fatalf("Service(%s) = %v, %v", keyWeb, ok, err)
	}
	want := &Service{
		objectMeta: objectMeta{Namespace: "ns", Name: "web"},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []ServicePort{{Protocol: corev1.ProtocolTCP, Port: 80}},
		rare:       &serviceRare{loadBalancerIPs: []netip.Addr{netip.MustParseAddr("198.18.0.100")}},
	}
	if diff := cmp.Diff(want, got, cmpCached); diff != "" {
		t.Errorf("cached Service (-want +got):\n%s", diff)
	}
	if _, ok, err := h.Service(ServiceKey{"ns", "orphan"}); ok || err != nil {
		t.Errorf("Service of a missing Service = %v, %v; want false, nil", ok, err)
	}

	for key, want := range map[ServiceKey][]string{keyWeb: {"web-1", "web-2"}, {"ns", "orphan"}: {"orphan-1"}, keyAPI: nil, {"other", "web"}: nil} {
		var names []string
		for _, s := range h.EndpointSlices(key) {
			names = append(names, s.Name)
		}
		if diff := cmp.Diff(want, names); diff != "" {
			t.Errorf("EndpointSlices(%s) (-want +got):\n%s", key, diff)
		}
	}
	eps := h.EndpointSlices(keyWeb)
	wantEndpoints := []Endpoint{{Addr: netip.MustParseAddr("10.244.1.5"), Ready: true, Serving: true}}
	if diff := cmp.Diff(wantEndpoints, eps[1].Endpoints, cmpCached); diff != "" {
		t.Errorf("slice endpoints (-want +got):\n%s", diff)
	}
}

// TestServiceChanges drives changes through the fake API server and its watches, the way the
// informers see them in production.
func TestServiceChanges(t *testing.T) {
	client := fake.NewClientset()
	h, err := New(kubetest.API{Clientset: client}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	changes := h.SubscribeServices()
	runHub(t, h)
	<-changes.C() // synced: an empty world
	if got := changes.Take(); got != nil {
		t.Errorf("empty cluster: marked %v", got)
	}
	ctx := t.Context()
	services := client.CoreV1().Services("ns")
	slices := client.DiscoveryV1().EndpointSlices("ns")
	check := func(what string, want map[ServiceKey]time.Time, last ServiceKey) {
		t.Helper()
		if diff := cmp.Diff(want, takeUntil(t, changes, last)); diff != "" {
			t.Errorf("%s: marked (-want +got):\n%s", what, diff)
		}
	}

	if _, err := services.Create(ctx, service("ns", "web", ""), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("service created", map[ServiceKey]time.Time{keyWeb: {}}, keyWeb)

	if _, err := slices.Create(ctx, slice("ns", "web-1", "web", "", t2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("slice created", map[ServiceKey]time.Time{keyWeb: t2}, keyWeb)

	// Events of one informer arrive in order: once the slice that follows is seen, an update that
	// marked nothing has been handled too.
	if _, err := slices.Update(ctx, slice("ns", "web-1", "web", "", t3), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := slices.Create(ctx, slice("ns", "api-1", "api", "", t1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("slice updated without a new resourceVersion", map[ServiceKey]time.Time{keyAPI: t1}, keyAPI)

	if _, err := slices.Update(ctx, slice("ns", "web-1", "api", "7", t3), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := takeUntil(t, changes, keyWeb)
	if _, ok := got[keyAPI]; !ok {
		maps.Copy(got, takeUntil(t, changes, keyAPI))
	}
	if diff := cmp.Diff(map[ServiceKey]time.Time{keyWeb: t3, keyAPI: t3}, got); diff != "" {
		t.Errorf("slice moved to another Service: marked (-want +got):\n%s", diff)
	}
	if eps := h.EndpointSlices(keyAPI); len(eps) != 2 {
		t.Errorf("EndpointSlices(%s) after the move: %d slices, want 2", keyAPI, len(eps))
	}

	if err := services.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("service deleted", map[ServiceKey]time.Time{keyWeb: {}}, keyWeb)

	if err := slices.Delete(ctx, "api-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("slice deleted", map[ServiceKey]time.Time{keyAPI: {}}, keyAPI)
}

// TestStandaloneServiceChanges: a tracker the hub does not feed coalesces the keys marked on it
// and wakes its reader once.
func TestStandaloneServiceChanges(t *testing.T) {
	c := NewServiceChanges()
	a, b := ServiceKey{Namespace: "ns", Name: "a"}, ServiceKey{Namespace: "ns", Name: "b"}
	c.Mark(a)
	c.Mark(b)
	c.Mark(a)
	select {
	case <-c.C():
	default:
		t.Fatal("Mark did not wake the reader")
	}
	got := c.Take()
	if len(got) != 2 || !got[a].IsZero() || !got[b].IsZero() {
		t.Errorf("Take = %v, want a and b without trigger times", got)
	}
	if c.Take() != nil {
		t.Error("a second Take returned keys again")
	}
}

// PendingSince is when the oldest key not yet taken was marked: later marks keep it, Take clears
// it.
func TestServiceChangesPendingSince(t *testing.T) {
	c := NewServiceChanges()
	if !c.PendingSince().IsZero() {
		t.Fatal("a new tracker has keys waiting")
	}
	before := time.Now()
	c.Mark(ServiceKey{Namespace: "ns", Name: "a"})
	first := c.PendingSince()
	if first.Before(before) || first.After(time.Now()) {
		t.Fatalf("PendingSince %v, want the time of the first mark", first)
	}
	time.Sleep(time.Millisecond)
	c.Mark(ServiceKey{Namespace: "ns", Name: "b"})
	if got := c.PendingSince(); !got.Equal(first) {
		t.Errorf("a second mark moved PendingSince from %v to %v", first, got)
	}
	c.Take()
	if !c.PendingSince().IsZero() {
		t.Error("PendingSince set after Take")
	}
}
