package hub

import (
	"cmp"
	"maps"
	"slices"
	"sync"

	"k8s.io/client-go/tools/cache"
)

// slicesByService holds the EndpointSlices that name a Service, by that Service, each list sorted
// by name. The hub keeps it itself rather than as an index of the informer: client-go's index
// holds a set of keys per indexed value, that is a map for each of the cluster's Services.
type slicesByService struct {
	mu sync.RWMutex
	m  map[ServiceKey][]*EndpointSlice
}

func newSlicesByService() *slicesByService {
	return &slicesByService{m: map[ServiceKey][]*EndpointSlice{}}
}

// of returns the slices of key, in a list of the caller's.
func (s *slicesByService) of(key ServiceKey) []*EndpointSlice {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.m[key])
}

// services returns the Services that slices name, in no order.
func (s *slicesByService) services() []ServiceKey {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Collect(maps.Keys(s.m))
}

// replace puts cur in place of old, either of which may be nil; a slice is known by its
// namespace and name, and may change Services.
func (s *slicesByService) replace(old, cur *EndpointSlice) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old != nil {
		if key, ok := old.concerns(); ok {
			list := slices.DeleteFunc(s.m[key], func(e *EndpointSlice) bool { return e.Name == old.Name })
			if len(list) == 0 {
				delete(s.m, key)
			} else {
				s.m[key] = list
			}
		}
	}
	if cur != nil {
		if key, ok := cur.concerns(); ok {
			list := s.m[key]
			i, found := slices.BinarySearchFunc(list, cur.Name, func(e *EndpointSlice, name string) int { return cmp.Compare(e.Name, name) })
			if found {
				list[i] = cur
			} else {
				s.m[key] = slices.Insert(list, i, cur)
			}
		}
	}
}

// sliceTracker files an EndpointSlice informer's objects in slices, then marks the Services they
// concern. Both in one handler: client-go runs each handler on a goroutine of its own, and a mark
// must never reach a subscriber before the slices it reads.
type sliceTracker struct {
	slices *slicesByService
	marker changeMarker
}

func (t sliceTracker) OnAdd(obj any, isInInitialList bool) {
	if s, ok := obj.(*EndpointSlice); ok {
		t.slices.replace(nil, s)
	}
	t.marker.OnAdd(obj, isInInitialList)
}

func (t sliceTracker) OnUpdate(oldObj, newObj any) {
	old, ok1 := oldObj.(*EndpointSlice)
	cur, ok2 := newObj.(*EndpointSlice)
	if ok1 && ok2 {
		t.slices.replace(old, cur)
	}
	t.marker.OnUpdate(oldObj, newObj)
}

func (t sliceTracker) OnDelete(obj any) {
	gone := obj
	if tomb, ok := gone.(cache.DeletedFinalStateUnknown); ok {
		gone = tomb.Obj
	}
	if s, ok := gone.(*EndpointSlice); ok {
		t.slices.replace(s, nil)
	}
	t.marker.OnDelete(obj)
}
