package forward

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
)

// spoofingUpstream answers each query on a raw UDP socket: first with the
// datagrams bad(q) makes, sent from the upstream's own address or, with
// fromElsewhere, from another port; then, unless silent, with the genuine
// answer.
type spoofingUpstream struct {
	addr netip.AddrPort
}

func startSpoofingUpstream(t *testing.T, bad func(q *dns.Msg) []*dns.Msg, fromElsewhere, silent bool) *spoofingUpstream {
	t.Helper()
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	other, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		conn.Close()
		other.Close()
		wg.Wait()
	})
	send := func(c *net.UDPConn, m *dns.Msg, to *net.UDPAddr) {
		b, err := m.Pack()
		if err != nil {
			t.Errorf("pack: %v", err)
			return
		}
		if _, err := c.WriteToUDP(b, to); err != nil {
			t.Logf("send: %v", err)
		}
	}
	wg.Go(func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return // closed by the cleanup
			}
			q := new(dns.Msg)
			if err := q.Unpack(buf[:n]); err != nil {
				t.Errorf("unpack query: %v", err)
				continue
			}
			sender := conn
			if fromElsewhere {
				sender = other
			}
			for _, m := range bad(q) {
				send(sender, m, from)
			}
			if !silent {
				time.Sleep(20 * time.Millisecond) // the bad datagrams arrive first
				send(conn, genuine(t, q), from)
			}
		}
	})
	return &spoofingUpstream{addr: netip.MustParseAddrPort(conn.LocalAddr().String())}
}

func genuine(t *testing.T, q *dns.Msg) *dns.Msg { return echoA(t)(q, false) }

func poisoned(t *testing.T, q *dns.Msg) *dns.Msg {
	r := new(dns.Msg)
	r.SetReply(q)
	r.Answer = []dns.RR{mustRR(t, q.Question[0].Name+" 86400 IN A 203.0.113.66")}
	return r
}

func TestSpoofedAnswersAreIgnored(t *testing.T) {
	wrongID := func(q *dns.Msg) []*dns.Msg {
		r := poisoned(t, q)
		r.Id = q.Id + 1
		return []*dns.Msg{r}
	}
	wrongQuestion := func(q *dns.Msg) []*dns.Msg {
		name := poisoned(t, q)
		name.Question[0].Name = "www.bank.example."
		name.Answer = []dns.RR{mustRR(t, "www.bank.example. 86400 IN A 203.0.113.66")}
		qtype := poisoned(t, q)
		qtype.Question[0].Qtype = dns.TypeAAAA
		class := poisoned(t, q)
		class.Question[0].Qclass = dns.ClassCHAOS
		return []*dns.Msg{name, qtype, class}
	}
	notAResponse := func(q *dns.Msg) []*dns.Msg {
		r := poisoned(t, q)
		r.Response = false
		return []*dns.Msg{r}
	}
	garbage := func(q *dns.Msg) []*dns.Msg {
		r := poisoned(t, q)
		r.Question = nil
		return []*dns.Msg{r}
	}
	rightButElsewhere := func(q *dns.Msg) []*dns.Msg { return []*dns.Msg{poisoned(t, q)} }

	tests := []struct {
		name           string
		bad            func(q *dns.Msg) []*dns.Msg
		fromElsewhere  bool
		wantMismatched float64
	}{
		{name: "wrong ID", bad: wrongID, wantMismatched: 1},
		{name: "wrong question", bad: wrongQuestion, wantMismatched: 3},
		{name: "not a response", bad: notAResponse, wantMismatched: 1},
		{name: "no question", bad: garbage, wantMismatched: 1},
		// The kernel drops it: the socket is connected to the upstream.
		{name: "right answer from another address", bad: rightButElsewhere, fromElsewhere: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startSpoofingUpstream(t, tt.bad, tt.fromElsewhere, false)
			f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
			got := ask(t, f, "www.example.", dns.TypeA)
			if want := "www.example. 300 IN A 192.0.2.1"; records(got.Answer) != want {
				t.Errorf("answer:\n%s\nwant the genuine\n%s", records(got.Answer), want)
			}
			if got := counter(f.m.mismatched.WithLabelValues(up.addr.String())); got != tt.wantMismatched {
				t.Errorf("mismatched = %v, want %v", got, tt.wantMismatched)
			}
		})
	}
}

func TestOnlySpoofedAnswersTimeOut(t *testing.T) {
	up := startSpoofingUpstream(t, func(q *dns.Msg) []*dns.Msg {
		r := poisoned(t, q)
		r.Id = q.Id ^ 0xffff
		return []*dns.Msg{r}
	}, false, true)
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}, UpstreamTimeout: 200 * time.Millisecond, QueryTimeout: 300 * time.Millisecond})
	if got := ask(t, f, "www.example.", dns.TypeA); got.Rcode != dns.RcodeServerFailure || len(got.Answer) != 0 {
		t.Errorf("answer:\n%v\nwant SERVFAIL", got)
	}
	if got := failures(f, up.addr, reasonTimeout); got != 1 {
		t.Errorf("timeouts = %v, want 1", got)
	}
	if _, err := cached(t, f, "www.example.", dns.TypeA); !errors.Is(err, errNoAnswer) {
		t.Error("the timeout was cached")
	}
}

func TestQueriesUseFreshIDsAndPorts(t *testing.T) {
	type seenQuery struct {
		id   uint16
		port uint16
	}
	var mu sync.Mutex
	var seen []seenQuery
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			mu.Lock()
			seen = append(seen, seenQuery{q.Id, uint16(from.Port)})
			mu.Unlock()
			b, _ := genuine(t, q).Pack()
			conn.WriteToUDP(b, from)
		}
	}()
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort(conn.LocalAddr().String())}})
	const n = 20
	for i := range n {
		ask(t, f, string(rune('a'+i))+".example.", dns.TypeA)
	}
	mu.Lock()
	defer mu.Unlock()
	ids, ports := map[uint16]bool{}, map[uint16]bool{}
	for _, s := range seen {
		ids[s.id], ports[s.port] = true, true
	}
	// Random 16-bit values: n of them collide with a chance of about
	// n²/2^17, here 0.3%; two collisions would be 1 in 100,000.
	if len(seen) != n || len(ids) < n-1 || len(ports) < n-1 {
		t.Errorf("%d queries came with %d distinct IDs from %d distinct ports", len(seen), len(ids), len(ports))
	}
}

func TestAnswersMatchesQuestionCaseInsensitively(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("www.example.com.", dns.TypeA)
	r := new(dns.Msg)
	r.SetReply(q)
	r.Question[0].Name = "WWW.EXAMPLE.COM."
	if !answers(q, r) {
		t.Error("an answer with the name in other case was refused")
	}
	r.Question[0].Name = "www.example.con."
	if answers(q, r) {
		t.Error("an answer to another name was taken")
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
