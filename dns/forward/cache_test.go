package forward

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
)

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
