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
//
// The maps are keyed by a 64-bit hash of the key, which also picks the
// shard: a hit hashes the name once. Each entry holds its key, and a
// lookup checks it, so two keys of one hash (one chance in 2^64 per pair)
// only cost each other their cache slot.
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
	entries map[uint64]*entry
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
		c.shards[i].entries = map[uint64]*entry{}
	}
	return c
}

// hash mixes the name's hash with the rest of the key.
func (c *cache) hash(k wire.Key) uint64 {
	h := maphash.String(c.seed, k.Name)
	h ^= uint64(k.Type)<<32 | uint64(k.Class)<<16
	if k.DO {
		h ^= 1
	}
	if k.CD {
		h ^= 2
	}
	h *= 0x9e3779b97f4a7c15 // spread the low bits into the high ones
	return h ^ h>>32
}

// get returns the entry for k, fresh or not, or nil.
func (c *cache) get(k wire.Key) *entry {
	h := c.hash(k)
	s := &c.shards[h&c.mask]
	s.mu.RLock()
	e := s.entries[h]
	s.mu.RUnlock()
	if e == nil || e.key != k {
		return nil
	}
	return e
}

// put stores e under its key, replacing what was there, and evicts other
// entries until the shard is within its bounds. An entry larger than a
// shard's share of the memory bound is not stored.
func (c *cache) put(e *entry, now time.Duration) {
	if e.size > c.maxBytes {
		return
	}
	h := c.hash(e.key)
	s := &c.shards[h&c.mask]
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.entries[h]; ok {
		c.forget(s, h, old)
	}
	s.entries[h] = e
	s.bytes += e.size
	c.m.entries[e.kind].Inc()
	c.m.bytes.Add(float64(e.size))
	for len(s.entries) > c.maxEntries || s.bytes > c.maxBytes {
		vh, v := victim(s, h, now)
		if v == nil {
			break
		}
		c.forget(s, vh, v)
		c.m.evictions.Inc()
	}
}

// forget deletes the entry e of hash h from s; the caller holds s.mu.
func (c *cache) forget(s *cacheShard, h uint64, e *entry) {
	delete(s.entries, h)
	s.bytes -= e.size
	c.m.entries[e.kind].Dec()
	c.m.bytes.Sub(float64(e.size))
}

// victim picks an entry of s other than keep to evict: of a few sampled
// (map iteration starts at a random place), an expired one if any, the one
// expired longest, else the one unused longest.
func victim(s *cacheShard, keep uint64, now time.Duration) (uint64, *entry) {
	var (
		bestHash    uint64
		best        *entry
		bestExpired bool
		bestScore   int64 // expiry time for expired entries, last use for fresh ones
		seen        int
	)
	for h, e := range s.entries {
		if h == keep {
			continue
		}
		expires := e.stored + e.lifetime
		expired := now >= expires
		score := e.lastUsed.Load()
		if expired {
			score = int64(expires)
		}
		if best == nil || (expired && !bestExpired) || (expired == bestExpired && score < bestScore) {
			bestHash, best, bestExpired, bestScore = h, e, expired, score
		}
		if seen++; seen == evictionSample {
			break
		}
	}
	return bestHash, best
}

// sweep removes the entries that can no longer answer, not even stale.
func (c *cache) sweep(now, maxStale time.Duration) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for h, e := range s.entries {
			if now-e.stored >= e.lifetime+staleWindow(e, maxStale) {
				c.forget(s, h, e)
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
