package forward

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

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
