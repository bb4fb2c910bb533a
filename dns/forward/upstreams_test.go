package forward

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

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
	// A closed port answers with ICMP port unreachable, which the kernel may rate-limit when the
	// other tests on this loopback draw on the same budget: then the attempt times out instead,
	// and it is the attempt that counts here, not how it failed.
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{a.addr, b.addr}, UpstreamTimeout: 200 * time.Millisecond})
	for _, n := range []string{"a.example.", "b.example.", "c.example."} {
		ask(t, f, n, dns.TypeA)
	}
	// Two failures put both on hold; the third query asks them anyway.
	for _, u := range []*testUpstream{a, b} {
		if got := failures(f, u.addr, reasonNetwork) + failures(f, u.addr, reasonTimeout); got != 3 {
			t.Errorf("failed attempts of %s = %v, want 3", u.addr, got)
		}
	}
}

func TestAllUpstreamsDown(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess))
	up.stop()
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, UpstreamTimeout: 200 * time.Millisecond})
	// The kernel may rate-limit the ICMP port unreachable while other tests share the host's
	// loopback; that attempt times out instead, and the next one, once the budget has refilled,
	// gets the ICMP error.
	for attempt := range 5 {
		if got := ask(t, f, fmt.Sprintf("x%d.example.", attempt), dns.TypeA); got.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode = %s, want SERVFAIL", dns.RcodeToString[got.Rcode])
		}
		if failures(f, up.addr, reasonNetwork) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := failures(f, up.addr, reasonNetwork); got != 1 {
		t.Errorf("network failures = %v, want 1 (port unreachable)", got)
	}
}
