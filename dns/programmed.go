package dns

import (
	"sync"

	"github.com/nodenet/nodenet/hub"
)

// KeySet collects the keys of Services whose rules the proxy has programmed, for the zone feed:
// the proxy adds from its goroutine without blocking, the feed takes them from its own.
type KeySet struct {
	// ch has a buffer of one: Add sends without blocking after adding keys, and a busy feed
	// finds one value however many keys came meanwhile. Never closed.
	ch   chan struct{}
	mu   sync.Mutex
	keys map[hub.ServiceKey]struct{}
}

// NewKeySet returns an empty set.
func NewKeySet() *KeySet {
	return &KeySet{ch: make(chan struct{}, 1), keys: map[hub.ServiceKey]struct{}{}}
}

// Add records keys and wakes the reader. It never blocks.
func (s *KeySet) Add(keys []hub.ServiceKey) {
	s.mu.Lock()
	for _, k := range keys {
		s.keys[k] = struct{}{}
	}
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

// C receives a value after Add.
func (s *KeySet) C() <-chan struct{} { return s.ch }

// Take returns the keys added since the last Take, and forgets them.
func (s *KeySet) Take() []hub.ServiceKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]hub.ServiceKey, 0, len(s.keys))
	for k := range s.keys {
		out = append(out, k)
	}
	clear(s.keys)
	return out
}
