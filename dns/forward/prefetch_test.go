package forward

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestPrefetch(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess, "ANSWER popular.example. 100 IN A 192.0.2.1"))
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, PrefetchHits: 3})
	ask(t, f, "popular.example.", dns.TypeA)
	k, _ := requestKey(query("popular.example.", dns.TypeA, false, false))
	first := f.cache.get(k)

	for range 8 { // popular: asked every 10 s, up to 80 s
		clock.Advance(10 * time.Second)
		if _, err := cached(t, f, "popular.example.", dns.TypeA); err != nil {
			t.Fatalf("AppendCached at 10 s steps: %v", err)
		}
	}
	if got := up.count(); got != 1 {
		t.Fatalf("upstream saw %d queries before the entry neared expiry, want 1", got)
	}
	clock.Advance(11 * time.Second) // 91 s: 9 s left, under 10% of 100 s
	if _, err := cached(t, f, "popular.example.", dns.TypeA); err != nil {
		t.Fatalf("AppendCached near expiry: %v", err)
	}
	eventually(t, "the prefetch to replace the entry", func() bool { return f.cache.get(k) != first })
	if got := up.count(); got != 2 {
		t.Errorf("upstream saw %d queries, want 2 (the prefetch)", got)
	}

	clock.Advance(20 * time.Second) // 111 s: the first entry would have expired
	fast, err := cached(t, f, "popular.example.", dns.TypeA)
	if err != nil {
		t.Fatalf("AppendCached after the first entry's expiry: %v", err)
	}
	if ttl := firstTTL(fast); ttl != 80 {
		t.Errorf("TTL = %d, want 80 (refreshed at 91 s)", ttl)
	}
	if got := counter(f.m.misses); got != 1 {
		t.Errorf("misses = %v, want 1: clients saw a miss", got)
	}
	if got := counter(f.m.prefetches); got != 1 {
		t.Errorf("prefetches = %v, want 1", got)
	}
}

func TestFailedPrefetchKeepsTheEntry(t *testing.T) {
	good := zoneAnswer(t, dns.RcodeSuccess, "ANSWER popular.example. 100 IN A 192.0.2.1")
	bad := zoneAnswer(t, dns.RcodeServerFailure)
	var mu sync.Mutex
	failing := false
	up := startUpstream(t, func(q *dns.Msg, tcp bool) *dns.Msg {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return bad(q, tcp)
		}
		return good(q, tcp)
	})
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, PrefetchHits: 1})
	ask(t, f, "popular.example.", dns.TypeA)
	mu.Lock()
	failing = true
	mu.Unlock()

	clock.Advance(91 * time.Second)
	cached(t, f, "popular.example.", dns.TypeA) // starts the prefetch
	eventually(t, "the prefetch to end", func() bool { return up.count() == 2 && counter(f.m.inFlight) == 0 })
	fast, err := cached(t, f, "popular.example.", dns.TypeA)
	if err != nil || firstTTL(fast) != 9 {
		t.Fatalf("after a failed prefetch: %v %v, want the entry with 9 s left", fast, err)
	}
	if got := counter(f.m.entries[kindServfail]); got != 0 {
		t.Errorf("a SERVFAIL was cached over a fresh entry")
	}
}

func TestUnpopularEntryIsNotPrefetched(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess, "ANSWER rare.example. 100 IN A 192.0.2.1"))
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, PrefetchHits: 3, PrefetchWindow: 20 * time.Second})
	ask(t, f, "rare.example.", dns.TypeA)
	for range 3 { // three hits, but 30 s apart: never a streak of three
		clock.Advance(30 * time.Second)
		cached(t, f, "rare.example.", dns.TypeA)
	}
	if got := counter(f.m.prefetches); got != 0 {
		t.Errorf("prefetches = %v, want 0", got)
	}
}
