package hub

import (
	"sync"
	"time"
)

// ServiceChanges tracks which Services one subscriber has yet to look at, so that it can sync only
// those. Informer handlers mark keys; the subscriber takes them.
type ServiceChanges struct {
	// ch has a buffer of one. The hub sends without blocking after marking a key, but only once
	// the Service and EndpointSlice caches have synced: the first value means the full world is
	// marked. A busy subscriber finds one pending value however many keys were marked meanwhile.
	// The hub never closes it.
	ch chan struct{}

	mu      sync.Mutex
	pending map[ServiceKey]time.Time
	since   time.Time // when the first key of pending was marked; zero while none is
}

// NewServiceChanges returns a tracker the hub does not feed, for a component that passes Service
// keys on to another: the proxy tells the DNS server which Services it has programmed.
func NewServiceChanges() *ServiceChanges { return &ServiceChanges{ch: make(chan struct{}, 1)} }

// Mark records that key changed and wakes the subscriber; it never blocks.
func (c *ServiceChanges) Mark(key ServiceKey) {
	c.mark(key, time.Time{})
	notify(c.ch)
}

// C receives a value when keys are waiting to be taken.
func (c *ServiceChanges) C() <-chan struct{} { return c.ch }

// Take returns the keys touched since the last Take, and forgets them. A key's time is the
// earliest endpoints.kubernetes.io/last-change-trigger-time among its changes, zero when none
// had one: the start of the latency until the change is programmed. Nil when nothing changed.
func (c *ServiceChanges) Take() map[ServiceKey]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending
	c.pending, c.since = nil, time.Time{}
	return p
}

// PendingSince returns when the oldest key not yet taken was marked; zero when none waits. A
// subscriber that stops taking keys shows here: kube-proxy's /healthz fails on it.
func (c *ServiceChanges) PendingSince() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.since
}

func (c *ServiceChanges) mark(key ServiceKey, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		c.pending, c.since = map[ServiceKey]time.Time{}, time.Now()
	}
	prev, ok := c.pending[key]
	if !ok || prev.IsZero() || (!t.IsZero() && t.Before(prev)) {
		c.pending[key] = t
	}
}

// SubscribeServices returns a new subscription to Service and EndpointSlice changes. Every key
// present once the caches have synced is marked in it, whether it subscribed before or after.
// Subscriptions last as long as the hub; one that is never taken from holds at most one entry per
// Service.
func (h *Hub) SubscribeServices() *ServiceChanges {
	c := &ServiceChanges{ch: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.serviceSubs = append(h.serviceSubs, c)
	if h.servicesReady {
		h.markAll(c)
	}
	return c
}

// ServicesSynced reports whether the Service and EndpointSlice caches have synced and every
// subscription has been given the full world.
func (h *Hub) ServicesSynced() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.servicesReady
}

func (h *Hub) markService(key ServiceKey, t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.serviceSubs {
		c.mark(key, t)
		if h.servicesReady {
			notify(c.ch)
		}
	}
}

// markWorld hands the full world to every subscription once the caches have synced, and from then
// on lets notifications flow.
func (h *Hub) markWorld() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.servicesReady = true
	for _, c := range h.serviceSubs {
		h.markAll(c)
	}
}

// markAll must be called with h.mu held.
func (h *Hub) markAll(c *ServiceChanges) {
	for _, k := range h.ServiceKeys() {
		c.mark(k, time.Time{})
	}
	notify(c.ch)
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
