package forward

import (
	"context"
	"net/netip"
	"testing"
	"time"

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
