package forward

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

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
