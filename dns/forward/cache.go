package forward

import (
	"hash/maphash"
	"math/bits"
	"sync"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/nodenet/nodenet/dns/wire"
)

const (
	// maxShards spreads lock traffic over this many shards at most.
	maxShards = 64
	// minShardEntries keeps small caches in few shards, so that the
	// entry bound holds for the cache as a whole rather than by luck of
	// hashing.
	minShardEntries = 128
	// evictionSample is how many entries an eviction compares: an
	// approximation of "least recently used" that needs no list to keep
	// in order on every hit.
	evictionSample = 5
)

// cache holds the responses, bounded by entries and bytes. Each shard's
// lock guards its map and byte count; entries themselves are immutable but
// for their atomics.
type cache struct {
	seed       maphash.Seed
	shards     []cacheShard
	mask       uint64
	maxEntries int   // per shard
	maxBytes   int64 // per shard
	m          *metrics
}

type cacheShard struct {
	mu      sync.RWMutex
	entries map[wire.Key]*entry
	bytes   int64
	// The pad keeps cores that read different shards off each other's
	// cache lines: every read writes its shard's lock.
	_ cpu.CacheLinePad
}

func newCache(maxEntries int, maxBytes int64, m *metrics) *cache {
	n := 1
	if want := maxEntries / minShardEntries; want > 1 {
		n = 1 << (bits.Len(uint(want)) - 1) // largest power of two not above want
	}
	n = min(n, maxShards)
	c := &cache{
		seed:       maphash.MakeSeed(),
		shards:     make([]cacheShard, n),
		mask:       uint64(n - 1),
		maxEntries: (maxEntries + n - 1) / n,
		maxBytes:   maxBytes / int64(n),
		m:          m,
	}
	for i := range c.shards {
		c.shards[i].entries = map[wire.Key]*entry{}
	}
	return c
}

func (c *cache) shard(k wire.Key) *cacheShard {
	return &c.shards[maphash.String(c.seed, k.Name)&c.mask]
}

// get returns the entry for k, fresh or not, or nil.
func (c *cache) get(k wire.Key) *entry {
	s := c.shard(k)
	s.mu.RLock()
	e := s.entries[k]
	s.mu.RUnlock()
	return e
}

// put stores e under k, replacing what was there, and evicts other entries
// until the shard is within its bounds. An entry larger than a shard's
// share of the memory bound is not stored.
func (c *cache) put(k wire.Key, e *entry, now time.Duration) {
	if e.size > c.maxBytes {
		return
	}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.entries[k]; ok {
		c.forget(s, k, old)
	}
	s.entries[k] = e
	s.bytes += e.size
	c.m.entries[e.kind].Inc()
	c.m.bytes.Add(float64(e.size))
	for len(s.entries) > c.maxEntries || s.bytes > c.maxBytes {
		vk, v := victim(s, k, now)
		if v == nil {
			break
		}
		c.forget(s, vk, v)
		c.m.evictions.Inc()
	}
}

// forget deletes k's entry e from s; the caller holds s.mu.
func (c *cache) forget(s *cacheShard, k wire.Key, e *entry) {
	delete(s.entries, k)
	s.bytes -= e.size
	c.m.entries[e.kind].Dec()
	c.m.bytes.Sub(float64(e.size))
}

// victim picks an entry of s other than keep to evict: of a few sampled
// (map iteration starts at a random place), an expired one if any, the one
// expired longest, else the one unused longest.
func victim(s *cacheShard, keep wire.Key, now time.Duration) (wire.Key, *entry) {
	var (
		bestKey     wire.Key
		best        *entry
		bestExpired bool
		bestScore   int64 // expiry time for expired entries, last use for fresh ones
		seen        int
	)
	for k, e := range s.entries {
		if k == keep {
			continue
		}
		expires := e.stored + e.lifetime
		expired := now >= expires
		score := e.lastUsed.Load()
		if expired {
			score = int64(expires)
		}
		if best == nil || (expired && !bestExpired) || (expired == bestExpired && score < bestScore) {
			bestKey, best, bestExpired, bestScore = k, e, expired, score
		}
		if seen++; seen == evictionSample {
			break
		}
	}
	return bestKey, best
}

// sweep removes the entries that can no longer answer, not even stale.
func (c *cache) sweep(now, maxStale time.Duration) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for k, e := range s.entries {
			if now-e.stored >= e.lifetime+staleWindow(e, maxStale) {
				c.forget(s, k, e)
			}
		}
		s.mu.Unlock()
	}
}

// staleWindow is how long after expiry e may answer when upstreams fail:
// never for a cached SERVFAIL.
func staleWindow(e *entry, maxStale time.Duration) time.Duration {
	if e.kind == kindServfail {
		return 0
	}
	return maxStale
}
