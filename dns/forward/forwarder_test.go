package forward

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
)

func TestCacheHit(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess, "ANSWER www.example.com. 300 IN A 192.0.2.1"))
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})

	first := ask(t, f, "WWW.Example.com.", dns.TypeA)
	clock.Advance(10 * time.Second)
	second := ask(t, f, "www.example.com.", dns.TypeA)

	if got := up.count(); got != 1 {
		t.Errorf("upstream saw %d queries for two lookups, want 1: %q", got, up.seen())
	}
	if got, want := records(first.Answer), "www.example.com. 300 IN A 192.0.2.1"; got != want {
		t.Errorf("first answer:\n%s\nwant\n%s", got, want)
	}
	if got, want := records(second.Answer), "www.example.com. 290 IN A 192.0.2.1"; got != want {
		t.Errorf("cached answer:\n%s\nwant\n%s", got, want)
	}
	if first.Question[0].Name != "WWW.Example.com." || first.Id != 0xbeef || !first.RecursionAvailable {
		t.Errorf("answer header or question not the client's: %v", first)
	}
	if got := counter(f.m.hits[kindSuccess]); got != 1 {
		t.Errorf("hits = %v, want 1", got)
	}
	if got := counter(f.m.misses); got != 1 {
		t.Errorf("misses = %v, want 1", got)
	}

	fast, err := cached(t, f, "www.example.com.", dns.TypeA)
	if err != nil {
		t.Fatalf("AppendCached: %v", err)
	}
	if fast.Id != 0x4242 || records(fast.Answer) != "www.example.com. 290 IN A 192.0.2.1" || fast.IsEdns0() != nil {
		t.Errorf("AppendCached answer:\n%v", fast)
	}
}

func TestAppendCachedRespectsMaxSize(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess, "ANSWER www.example.com. 300 IN A 192.0.2.1"))
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	ask(t, f, "www.example.com.", dns.TypeA)
	k, _ := requestKey(query("www.example.com.", dns.TypeA, false, false))
	size := len(f.cache.get(k).wire)

	dst := []byte("prefix")
	if got, ok := f.AppendCached(dst, k, 1, size-1); ok || string(got) != "prefix" {
		t.Errorf("AppendCached with maxSize below the answer = %q, %t; want dst unchanged, false", got, ok)
	}
	got, ok := f.AppendCached(dst, k, 1, size)
	if !ok || len(got) != len("prefix")+size || string(got[:6]) != "prefix" {
		t.Errorf("AppendCached with maxSize of the answer = %d bytes, %t", len(got), ok)
	}
}

func TestNegativeCache(t *testing.T) {
	soa := "NS example.com. 3600 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60"
	tests := []struct {
		name    string
		rcode   int
		records []string
		wantTTL string // the SOA as cached answers carry it; "" for not cached
	}{
		{name: "NXDOMAIN", rcode: dns.RcodeNameError, records: []string{soa},
			wantTTL: "example.com. 50 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60"},
		{name: "NODATA", rcode: dns.RcodeSuccess, records: []string{soa},
			wantTTL: "example.com. 50 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60"},
		{name: "NXDOMAIN without SOA is not cached", rcode: dns.RcodeNameError},
		{name: "NODATA without SOA is not cached", rcode: dns.RcodeSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, zoneAnswer(t, tt.rcode, tt.records...))
			f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})

			ask(t, f, "nope.example.com.", dns.TypeA)
			clock.Advance(10 * time.Second)
			second := ask(t, f, "nope.example.com.", dns.TypeA)
			if second.Rcode != tt.rcode {
				t.Errorf("rcode = %s, want %s", dns.RcodeToString[second.Rcode], dns.RcodeToString[tt.rcode])
			}
			if tt.wantTTL == "" {
				if got := up.count(); got != 2 {
					t.Errorf("upstream saw %d queries, want 2 (nothing cached)", got)
				}
				return
			}
			if got := up.count(); got != 1 {
				t.Errorf("upstream saw %d queries, want 1", got)
			}
			if got := records(second.Ns); got != tt.wantTTL {
				t.Errorf("cached authority:\n%s\nwant\n%s", got, tt.wantTTL)
			}
			if got := counter(f.m.hits[kindDenial]); got != 1 {
				t.Errorf("denial hits = %v, want 1", got)
			}
			clock.Advance(50 * time.Second) // the SOA MINIMUM, 60 s, is over
			ask(t, f, "nope.example.com.", dns.TypeA)
			if got := up.count(); got != 2 {
				t.Errorf("upstream saw %d queries after the negative TTL, want 2", got)
			}
		})
	}
}

func TestTTLClamps(t *testing.T) {
	tests := []struct {
		name    string
		rcode   int
		record  string
		wantTTL uint32
	}{
		{name: "below MinTTL", rcode: dns.RcodeSuccess, record: "ANSWER x.example. 1 IN A 192.0.2.1", wantTTL: 5},
		{name: "zero TTL", rcode: dns.RcodeSuccess, record: "ANSWER x.example. 0 IN A 192.0.2.1", wantTTL: 5},
		{name: "above MaxTTL", rcode: dns.RcodeSuccess, record: "ANSWER x.example. 86400 IN A 192.0.2.1", wantTTL: 3600},
		{name: "negative above MaxNegativeTTL", rcode: dns.RcodeNameError,
			record: "NS example. 86400 IN SOA ns.example. host.example. 1 7200 900 1209600 86400", wantTTL: 1800},
		{name: "negative TTL is the SOA's own when below MINIMUM", rcode: dns.RcodeNameError,
			record: "NS example. 30 IN SOA ns.example. host.example. 1 7200 900 1209600 86400", wantTTL: 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, zoneAnswer(t, tt.rcode, tt.record))
			f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
			got := ask(t, f, "x.example.", dns.TypeA)
			if ttl := firstTTL(got); ttl != tt.wantTTL {
				t.Errorf("TTL = %d, want %d", ttl, tt.wantTTL)
			}

			clock.Advance(time.Duration(tt.wantTTL)*time.Second - 1500*time.Millisecond)
			fast, err := cached(t, f, "x.example.", dns.TypeA)
			if err != nil {
				t.Fatalf("AppendCached 1.5 s before expiry: %v", err)
			}
			if ttl := firstTTL(fast); ttl != 2 {
				t.Errorf("TTL 1.5 s before expiry = %d, want 2", ttl)
			}
			clock.Advance(1500 * time.Millisecond)
			if _, err := cached(t, f, "x.example.", dns.TypeA); !errors.Is(err, errNoAnswer) {
				t.Errorf("AppendCached answered an expired entry")
			}
			ask(t, f, "x.example.", dns.TypeA)
			if got := up.count(); got != 2 {
				t.Errorf("upstream saw %d queries, want 2 (one after expiry)", got)
			}
		})
	}
}

func firstTTL(m *dns.Msg) uint32 {
	for _, section := range [][]dns.RR{m.Answer, m.Ns} {
		if len(section) > 0 {
			return section[0].Header().Ttl
		}
	}
	return 0
}

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

func TestServeStale(t *testing.T) {
	answer := zoneAnswer(t, dns.RcodeSuccess, "ANSWER stale.example. 10 IN A 192.0.2.1")
	up := startUpstream(t, answer)
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	ask(t, f, "stale.example.", dns.TypeA)

	up.stop()
	clock.Advance(20 * time.Second)
	got := ask(t, f, "stale.example.", dns.TypeA)
	if want := "stale.example. 30 IN A 192.0.2.1"; got.Rcode != dns.RcodeSuccess || records(got.Answer) != want {
		t.Fatalf("answer with the upstream stopped:\n%v\nwant %s", got, want)
	}
	if got := counter(f.m.servedStale); got != 1 {
		t.Errorf("served stale = %v, want 1", got)
	}
	if _, err := cached(t, f, "stale.example.", dns.TypeA); err == nil {
		t.Error("the fast path answered an expired entry")
	}

	// The upstream comes back: within the failure recheck timer clients
	// still get stale data at once, after it the background refresh
	// brings the entry back.
	up = restartUpstream(t, up.addr, answer)
	ask(t, f, "stale.example.", dns.TypeA)
	if got := up.count(); got != 0 {
		t.Errorf("upstream asked %d times within the recheck timer", got)
	}
	clock.Advance(staleRecheck)
	if got := ask(t, f, "stale.example.", dns.TypeA); firstTTL(got) != staleTTL {
		t.Errorf("answer when the refresh starts: %v, want the stale one", got)
	}
	eventually(t, "the background refresh", func() bool {
		_, err := cached(t, f, "stale.example.", dns.TypeA)
		return err == nil
	})
	if got := counter(f.m.servedStale); got != 3 {
		t.Errorf("served stale = %v, want 3", got)
	}

	clock.Advance(time.Hour + time.Minute)
	up.stop()
	if got := ask(t, f, "stale.example.", dns.TypeA); got.Rcode != dns.RcodeServerFailure {
		t.Errorf("answer past MaxStale: %v, want SERVFAIL", got)
	}
}

func TestServeStaleWhenUpstreamIsSlow(t *testing.T) {
	release := make(chan struct{})
	served := zoneAnswer(t, dns.RcodeSuccess, "ANSWER slow.example. 10 IN A 192.0.2.1")
	var slow sync.Mutex
	slowNow := false
	up := startUpstream(t, func(q *dns.Msg, tcp bool) *dns.Msg {
		slow.Lock()
		s := slowNow
		slow.Unlock()
		if s {
			<-release
		}
		return served(q, tcp)
	})
	t.Cleanup(func() { close(release) })
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, StaleAnswerTimeout: 50 * time.Millisecond})
	ask(t, f, "slow.example.", dns.TypeA)
	slow.Lock()
	slowNow = true
	slow.Unlock()
	clock.Advance(15 * time.Second)
	if got := ask(t, f, "slow.example.", dns.TypeA); firstTTL(got) != staleTTL {
		t.Errorf("answer while upstream is slow: %v, want the stale one", got)
	}
}

func TestServfailIsCachedBriefly(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeServerFailure))
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	for range 2 {
		if got := ask(t, f, "broken.example.", dns.TypeA); got.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode = %s, want SERVFAIL", dns.RcodeToString[got.Rcode])
		}
	}
	if got := up.count(); got != 1 {
		t.Errorf("upstream saw %d queries, want 1", got)
	}
	clock.Advance(5 * time.Second)
	ask(t, f, "broken.example.", dns.TypeA)
	if got := up.count(); got != 2 {
		t.Errorf("upstream saw %d queries after ServfailTTL, want 2", got)
	}
}

func TestTruncationFallsBackToTCP(t *testing.T) {
	full := zoneAnswer(t, dns.RcodeSuccess, "ANSWER big.example. 300 IN TXT \"all of it\"")
	up := startUpstream(t, func(q *dns.Msg, tcp bool) *dns.Msg {
		if tcp {
			return full(q, tcp)
		}
		r := new(dns.Msg)
		r.SetReply(q)
		r.Truncated = true
		return r
	})
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	got := ask(t, f, "big.example.", dns.TypeTXT)
	if want := "big.example. 300 IN TXT \"all of it\""; records(got.Answer) != want || got.Truncated {
		t.Errorf("answer:\n%v\nwant %s", got, want)
	}
	want := []string{"udp big.example. TXT do=false cd=false", "tcp big.example. TXT do=false cd=false"}
	if diff := cmp.Diff(want, up.seen()); diff != "" {
		t.Errorf("upstream queries (-want +got):\n%s", diff)
	}
}

func TestDOAndCDAreCachedApart(t *testing.T) {
	up := startUpstream(t, func(q *dns.Msg, _ bool) *dns.Msg {
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = []dns.RR{mustRR(t, "signed.example. 300 IN A 192.0.2.1")}
		opt := q.IsEdns0()
		if opt != nil && opt.Do() {
			r.Answer = append(r.Answer, mustRR(t, "signed.example. 300 IN RRSIG A 13 2 300 20300101000000 20200101000000 12345 example. c2lnbmF0dXJl"))
		}
		if opt != nil {
			r.SetEdns0(opt.UDPSize(), opt.Do())
		}
		return r
	})
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	ctx := context.Background()

	withDO := f.Resolve(ctx, query("signed.example.", dns.TypeA, true, true))
	plain := f.Resolve(ctx, query("signed.example.", dns.TypeA, true, false))
	cd := query("signed.example.", dns.TypeA, true, false)
	cd.CheckingDisabled = true
	f.Resolve(ctx, cd)
	f.Resolve(ctx, query("signed.example.", dns.TypeA, true, true)) // cached
	f.Resolve(ctx, query("signed.example.", dns.TypeA, false, false))

	want := []string{
		"udp signed.example. A do=true cd=false",
		"udp signed.example. A do=false cd=false",
		"udp signed.example. A do=false cd=true",
	}
	if diff := cmp.Diff(want, up.seen()); diff != "" {
		t.Errorf("upstream queries (-want +got):\n%s", diff)
	}
	if len(withDO.Answer) != 2 || len(plain.Answer) != 1 {
		t.Errorf("DO answer has %d records, plain %d; want 2 and 1", len(withDO.Answer), len(plain.Answer))
	}
	if opt := withDO.IsEdns0(); opt == nil || !opt.Do() {
		t.Errorf("answer to a DO query lacks an OPT with DO: %v", withDO)
	}
}

func TestBoundsEvict(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		wantMaxLen int
	}{
		{name: "entries", cfg: Config{CacheSize: 4}, wantMaxLen: 4},
		{name: "bytes", cfg: Config{CacheSize: 100, CacheBytes: 3 * (entryOverhead + 100)}, wantMaxLen: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, echoA(t))
			tt.cfg.Upstreams = []netip.AddrPort{up.addr}
			f, _ := startForwarder(t, tt.cfg)
			names := []string{"a.example.", "b.example.", "c.example.", "d.example.", "e.example.", "f.example."}
			for _, n := range names {
				ask(t, f, n, dns.TypeA)
			}
			n := 0
			for i := range f.cache.shards {
				n += len(f.cache.shards[i].entries)
			}
			if n > tt.wantMaxLen || n == 0 {
				t.Errorf("cache holds %d entries, want 1 to %d", n, tt.wantMaxLen)
			}
			if got := counter(f.m.evictions); got != float64(len(names)-n) {
				t.Errorf("evictions = %v, want %d", got, len(names)-n)
			}
			if got := counter(f.m.entries[kindSuccess]); got != float64(n) {
				t.Errorf("entries gauge = %v, want %d", got, n)
			}
			if _, err := cached(t, f, "f.example.", dns.TypeA); err != nil {
				t.Errorf("the newest entry was evicted")
			}
		})
	}
}

func TestEvictionPrefersExpiredEntries(t *testing.T) {
	up := startUpstream(t, func(q *dns.Msg, _ bool) *dns.Msg {
		ttl := "300"
		if strings.HasPrefix(q.Question[0].Name, "short") {
			ttl = "10"
		}
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = []dns.RR{mustRR(t, q.Question[0].Name+" "+ttl+" IN A 192.0.2.1")}
		return r
	})
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, CacheSize: 3})
	for _, n := range []string{"long1.example.", "short.example.", "long2.example."} {
		ask(t, f, n, dns.TypeA)
	}
	clock.Advance(20 * time.Second)
	ask(t, f, "new.example.", dns.TypeA)
	for _, n := range []string{"long1.example.", "long2.example.", "new.example."} {
		if _, err := cached(t, f, n, dns.TypeA); err != nil {
			t.Errorf("%s was evicted, want the expired short.example. gone instead", n)
		}
	}
}

func TestSweepDropsWhatCannotAnswer(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess, "ANSWER x.example. 10 IN A 192.0.2.1"))
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	ask(t, f, "x.example.", dns.TypeA)
	clock.Advance(time.Hour) // expired, but may still answer stale
	f.cache.sweep(f.clock.read(), f.cfg.MaxStale)
	if got := counter(f.m.entries[kindSuccess]); got != 1 {
		t.Fatalf("entries after a sweep within the stale window = %v, want 1", got)
	}
	clock.Advance(10 * time.Second)
	f.cache.sweep(f.clock.read(), f.cfg.MaxStale)
	if got := counter(f.m.entries[kindSuccess]); got != 0 {
		t.Errorf("entries after a sweep past the stale window = %v, want 0", got)
	}
	if got := counter(f.m.bytes); got != 0 {
		t.Errorf("cache bytes = %v, want 0", got)
	}
}

// blockingUpstream answers every query once release is closed; started
// receives each query's name as it arrives.
func blockingUpstream(t *testing.T, rcode int) (up *testUpstream, started <-chan string, release chan struct{}) {
	arrived := make(chan string, 100)
	release = make(chan struct{})
	up = startUpstream(t, func(q *dns.Msg, _ bool) *dns.Msg {
		arrived <- q.Question[0].Name
		<-release
		r := new(dns.Msg)
		r.SetRcode(q, rcode)
		return r
	})
	return up, arrived, release
}

func TestIdenticalQueriesShareOneUpstreamQuery(t *testing.T) {
	// REFUSED is not cached, so only coalescing can spare the upstream.
	up, started, release := blockingUpstream(t, dns.RcodeRefused)
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})

	const clients = 50
	var wg sync.WaitGroup
	answers := make(chan *dns.Msg, clients)
	for range clients {
		wg.Go(func() { answers <- ask(t, f, "storm.example.", dns.TypeA) })
	}
	<-started
	eventually(t, "every client to join the query in flight", func() bool { return counter(f.m.coalesced) == clients-1 })
	close(release)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.Rcode != dns.RcodeRefused {
			t.Errorf("a client got %s, want the upstream's REFUSED", dns.RcodeToString[a.Rcode])
		}
	}
	if got := up.count(); got != 1 {
		t.Errorf("upstream saw %d queries for %d identical client queries, want 1", got, clients)
	}
}

func TestInFlightCap(t *testing.T) {
	up, started, release := blockingUpstream(t, dns.RcodeRefused)
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, MaxInFlight: 2})

	var wg sync.WaitGroup
	for _, n := range []string{"a.example.", "b.example."} {
		wg.Go(func() { ask(t, f, n, dns.TypeA) })
		<-started
	}
	if got := ask(t, f, "c.example.", dns.TypeA); got.Rcode != dns.RcodeServerFailure {
		t.Errorf("third distinct query got %s, want SERVFAIL at once", dns.RcodeToString[got.Rcode])
	}
	if got := counter(f.m.rejected); got != 1 {
		t.Errorf("rejects = %v, want 1", got)
	}
	if got := counter(f.m.inFlight); got != 2 {
		t.Errorf("in flight = %v, want 2", got)
	}
	close(release)
	wg.Wait()
	if got := up.count(); got != 2 {
		t.Errorf("upstream saw %d queries, want 2", got)
	}
}

func TestFailover(t *testing.T) {
	var mu sync.Mutex
	blackholed := 0
	dead := startUpstream(t, func(*dns.Msg, bool) *dns.Msg {
		mu.Lock()
		blackholed++
		mu.Unlock()
		return nil // never answers
	})
	good := startUpstream(t, echoA(t))
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{dead.addr, good.addr}, UpstreamTimeout: 100 * time.Millisecond})
	asked := func() int {
		mu.Lock()
		defer mu.Unlock()
		return blackholed
	}

	for i, n := range []string{"a.example.", "b.example.", "c.example.", "d.example."} {
		if got := ask(t, f, n, dns.TypeA); len(got.Answer) != 1 {
			t.Fatalf("query %d: %v, want the second upstream's answer", i, got)
		}
	}
	if got := asked(); got != maxFails {
		t.Errorf("the silent upstream was asked %d times, want %d: then it is skipped", got, maxFails)
	}
	if got := failures(f, dead.addr, reasonTimeout); got != maxFails {
		t.Errorf("timeouts of the silent upstream = %v, want %d", got, maxFails)
	}
	clock.Advance(holdDown)
	ask(t, f, "e.example.", dns.TypeA)
	if got := asked(); got != maxFails+1 {
		t.Errorf("the silent upstream was asked %d times after its hold, want %d", got, maxFails+1)
	}
}

func TestFailoverOnServfail(t *testing.T) {
	failing := startUpstream(t, zoneAnswer(t, dns.RcodeServerFailure))
	good := startUpstream(t, echoA(t))
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{failing.addr, good.addr}})
	for _, n := range []string{"a.example.", "b.example.", "c.example."} {
		if got := ask(t, f, n, dns.TypeA); got.Rcode != dns.RcodeSuccess {
			t.Fatalf("rcode = %s, want the second upstream's NOERROR", dns.RcodeToString[got.Rcode])
		}
	}
	// SERVFAIL is an answer: the first upstream is asked every time.
	if got := failing.count(); got != 3 {
		t.Errorf("the upstream answering SERVFAIL was asked %d times, want 3", got)
	}
}

func TestUpstreamsAllOnHoldAreStillAsked(t *testing.T) {
	a := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess))
	b := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess))
	a.stop()
	b.stop()
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{a.addr, b.addr}})
	for _, n := range []string{"a.example.", "b.example.", "c.example."} {
		ask(t, f, n, dns.TypeA)
	}
	// Two failures put both on hold; the third query asks them anyway.
	for _, u := range []*testUpstream{a, b} {
		if got := failures(f, u.addr, reasonNetwork); got != 3 {
			t.Errorf("failures of %s = %v, want 3", u.addr, got)
		}
	}
}

func TestAllUpstreamsDown(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess))
	up.stop()
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	if got := ask(t, f, "x.example.", dns.TypeA); got.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[got.Rcode])
	}
	if got := failures(f, up.addr, reasonNetwork); got != 1 {
		t.Errorf("network failures = %v, want 1 (port unreachable)", got)
	}
}

func TestRequestsNotForwarded(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess))
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	notify := query("example.", dns.TypeSOA, false, false)
	notify.Opcode = dns.OpcodeNotify
	two := query("example.", dns.TypeA, true, false)
	two.Question = append(two.Question, dns.Question{Name: "b.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	tests := []struct {
		name  string
		req   *dns.Msg
		rcode int
	}{
		{"NOTIFY", notify, dns.RcodeNotImplemented},
		{"two questions", two, dns.RcodeFormatError},
		{"AXFR", query("example.", dns.TypeAXFR, false, false), dns.RcodeRefused},
	}
	for _, tt := range tests {
		got := f.Resolve(context.Background(), tt.req)
		if got.Rcode != tt.rcode || got.Id != tt.req.Id {
			t.Errorf("%s: rcode %s id %#x, want %s id %#x", tt.name, dns.RcodeToString[got.Rcode], got.Id, dns.RcodeToString[tt.rcode], tt.req.Id)
		}
	}
	if got := up.count(); got != 0 {
		t.Errorf("upstream saw %d queries, want 0", got)
	}
}

func TestResolveAfterRunStops(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess, "ANSWER x.example. 300 IN A 192.0.2.1"))
	f, err := New(Config{Upstreams: []netip.AddrPort{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := ask(t, f, "x.example.", dns.TypeA); got.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode after Run = %s, want SERVFAIL", dns.RcodeToString[got.Rcode])
	}
}

func TestConfigErrors(t *testing.T) {
	up := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no upstreams", Config{}, "no upstreams"},
		{"port 0", Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:0")}}, `upstream "192.0.2.53:0"`},
		{"unspecified", Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}}, `upstream "0.0.0.0:53"`},
		{"negative size", Config{Upstreams: up, CacheSize: -1}, "CacheSize is -1"},
		{"negative bytes", Config{Upstreams: up, CacheBytes: -1}, "CacheBytes is -1"},
		{"percent", Config{Upstreams: up, PrefetchPercent: 95}, "PrefetchPercent is 95; it must be positive and at most 90"},
		{"negative timeout", Config{Upstreams: up, UpstreamTimeout: -time.Second}, "UpstreamTimeout is -1s"},
		{"fractional TTL", Config{Upstreams: up, MaxTTL: 1500 * time.Millisecond}, "MaxTTL is 1.5s; DNS TTLs are whole seconds"},
		{"min above max", Config{Upstreams: up, MinTTL: time.Hour, MaxTTL: time.Minute}, "MinTTL 1h0m0s is above MaxTTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	got := []any{cfg.CacheSize, cfg.CacheBytes, cfg.MaxTTL, cfg.MaxNegativeTTL, cfg.MinTTL, cfg.ServfailTTL,
		cfg.PrefetchHits, cfg.PrefetchWindow, cfg.PrefetchPercent, cfg.MaxStale, cfg.StaleAnswerTimeout,
		cfg.MaxInFlight, cfg.UpstreamTimeout, cfg.QueryTimeout}
	want := []any{10000, int64(32 << 20), time.Hour, 30 * time.Minute, 5 * time.Second, 5 * time.Second,
		10, time.Minute, 10, time.Hour, 1800 * time.Millisecond,
		1000, 2 * time.Second, 4 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("defaults = %v, want %v", got, want)
	}
}
