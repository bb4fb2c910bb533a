package forward

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/nodenet/nodenet/dns/wire"
)

// benchForwarder is a running Forwarder whose cache holds answers for
// names, put there directly: AppendCached never leaves the cache.
func benchForwarder(b *testing.B, names []string) *Forwarder {
	f, err := New(Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	now := f.clock.read()
	for _, name := range names {
		resp := new(dns.Msg)
		resp.SetQuestion(name, dns.TypeA)
		resp.Response, resp.RecursionAvailable = true, true
		resp.Answer = []dns.RR{
			mustRR(b, name+" 3600 IN CNAME edge."+name),
			mustRR(b, "edge."+name+" 3600 IN A 192.0.2.1"),
			mustRR(b, "edge."+name+" 3600 IN A 192.0.2.2"),
		}
		k := wire.Key{Name: name, Type: dns.TypeA, Class: dns.ClassINET}
		e, ok, err := newEntry(resp, k, now, &f.cfg)
		if err != nil || !ok {
			b.Fatalf("newEntry: %v %t", err, ok)
		}
		f.cache.put(e, now)
	}
	return f
}

// BenchmarkAppendCached is the server's per-hit cost on a cached name.
func BenchmarkAppendCached(b *testing.B) {
	f := benchForwarder(b, []string{"www.example.com."})
	k := wire.Key{Name: "www.example.com.", Type: dns.TypeA, Class: dns.ClassINET}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		out, ok := f.AppendCached(buf[:0], k, uint16(i), 512)
		if !ok || len(out) == 0 {
			b.Fatal("miss")
		}
	}
}

// BenchmarkAppendCachedParallel spreads hits over many names and all
// cores, as a server's reader goroutines do.
func BenchmarkAppendCachedParallel(b *testing.B) {
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf("host%d.example.com.", i)
	}
	f := benchForwarder(b, names)
	keys := make([]wire.Key, len(names))
	for i, n := range names {
		keys[i] = wire.Key{Name: n, Type: dns.TypeA, Class: dns.ClassINET}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 0, 512)
		i := 0
		for pb.Next() {
			if _, ok := f.AppendCached(buf[:0], keys[i%len(keys)], uint16(i), 512); !ok {
				b.Error("miss")
				return
			}
			i++
		}
	})
}

// BenchmarkResolveCached is the slow path's cost on a cached name, for
// comparison: what a server pays without AppendCached.
func BenchmarkResolveCached(b *testing.B) {
	f := benchForwarder(b, []string{"www.example.com."})
	req := query("www.example.com.", dns.TypeA, true, false)
	b.ReportAllocs()
	for b.Loop() {
		if r := f.Resolve(b.Context(), req); len(r.Answer) != 3 {
			b.Fatal("miss")
		}
	}
}
