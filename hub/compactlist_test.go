package hub

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// fakeItemLister serves Services item by item and records how it was asked.
type fakeItemLister struct {
	*cache.ListWatch
	items []corev1.Service

	mu      sync.Mutex
	eachRV  []string // ListEach calls' resource versions
	watches []metav1.ListOptions
}

func newFakeItemLister(items ...corev1.Service) *fakeItemLister {
	f := &fakeItemLister{items: items}
	f.ListWatch = &cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			panic("whole list asked for")
		},
		WatchFuncWithContext: func(_ context.Context, o metav1.ListOptions) (watch.Interface, error) {
			f.mu.Lock()
			f.watches = append(f.watches, o)
			f.mu.Unlock()
			return watch.NewFake(), nil
		},
	}
	return f
}

func (f *fakeItemLister) ListEach(_ context.Context, o metav1.ListOptions, each func(runtime.Object) error) (metav1.ListMeta, error) {
	f.mu.Lock()
	f.eachRV = append(f.eachRV, o.ResourceVersion)
	f.mu.Unlock()
	for i := range f.items {
		if err := each(f.items[i].DeepCopy()); err != nil {
			return metav1.ListMeta{}, err
		}
	}
	return metav1.ListMeta{ResourceVersion: "7"}, nil
}

// An informer over an item lister fills its cache from one item-by-item list, converted to the
// compact types, and then watches from the list's version without asking for initial events.
func TestCompactListFillsInformer(t *testing.T) {
	svc := func(name, ip string) corev1.Service {
		return corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "5"},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}}
	}
	lw := newFakeItemLister(svc("web", "10.96.0.10"), svc("db", "10.96.0.11"))
	inf := cache.NewSharedIndexInformer(withCompactList(lw, toService), &corev1.Service{}, 0, cache.Indexers{})
	if err := inf.SetTransform(toService); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); inf.RunWithContext(ctx) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if !cache.WaitForCacheSync(wctx.Done(), inf.HasSynced) {
		t.Fatal("cache never synced")
	}

	for _, key := range []string{"ns/web", "ns/db"} {
		obj, ok, err := inf.GetStore().GetByKey(key)
		if err != nil || !ok {
			t.Fatalf("%s not cached: %v", key, err)
		}
		if s, isCompact := obj.(*Service); !isCompact || len(s.ClusterIPs) != 1 {
			t.Errorf("%s cached as %T %+v, want a compact Service with its ClusterIP", key, obj, obj)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		lw.mu.Lock()
		watches, each := append([]metav1.ListOptions(nil), lw.watches...), append([]string(nil), lw.eachRV...)
		lw.mu.Unlock()
		if len(watches) > 0 {
			if len(each) != 1 || each[0] != "0" {
				t.Errorf("lists from resource versions %q, want one from the watch cache (\"0\")", each)
			}
			w := watches[0]
			if w.ResourceVersion != "7" || w.SendInitialEvents != nil {
				t.Errorf("watch from %q with initial events %v, want from the list's 7 without", w.ResourceVersion, w.SendInitialEvents)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the informer never watched")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A ListerWatcher that cannot list item by item is used as it is.
func TestCompactListLeavesOthersAlone(t *testing.T) {
	lw := &cache.ListWatch{}
	if got := withCompactList(lw, toService); got != cache.ListerWatcher(lw) {
		t.Errorf("withCompactList wrapped a plain ListWatch: %T", got)
	}
}
