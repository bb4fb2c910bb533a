package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testClock is the injected clock: TTL logic moves only when a test says so.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// startForwarder builds a Forwarder on a test clock, runs it until the
// test ends and returns it with the clock.
func startForwarder(t *testing.T, cfg Config) (*Forwarder, *testClock) {
	t.Helper()
	clock := newTestClock()
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	cfg.Log = zaptest.NewLogger(t)
	cfg.Registerer = prometheus.NewRegistry()
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return f, clock
}

// answerFunc makes an upstream's response to q (tcp tells the transport);
// nil sends nothing.
type answerFunc func(q *dns.Msg, tcp bool) *dns.Msg

// testUpstream is a DNS server on loopback, UDP and TCP on one port, that
// records the queries it gets.
type testUpstream struct {
	addr   netip.AddrPort
	answer answerFunc

	mu      sync.Mutex
	queries []string
	servers []*dns.Server
}

func startUpstream(t *testing.T, answer answerFunc) *testUpstream {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		addr := netip.MustParseAddrPort(pc.LocalAddr().String())
		l, err := net.Listen("tcp", addr.String())
		if err != nil {
			pc.Close() // the TCP port is taken: try another
			continue
		}
		u := &testUpstream{addr: addr, answer: answer}
		u.serve(t, pc, l)
		return u
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil
}

// restartUpstream serves answer again on the address of a stopped upstream.
func restartUpstream(t *testing.T, addr netip.AddrPort, answer answerFunc) *testUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		pc.Close()
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	u := &testUpstream{addr: addr, answer: answer}
	u.serve(t, pc, l)
	return u
}

func (u *testUpstream) serve(t *testing.T, pc net.PacketConn, l net.Listener) {
	for _, srv := range []*dns.Server{{PacketConn: pc}, {Listener: l}} {
		tcp := srv.Listener != nil
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		srv.Handler = dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			u.record(q, tcp)
			if r := u.answer(q, tcp); r != nil {
				if err := w.WriteMsg(r); err != nil {
					t.Logf("upstream write: %v", err)
				}
			}
		})
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				t.Logf("upstream serve: %v", err)
			}
		}()
		<-started
		u.servers = append(u.servers, srv)
	}
	t.Cleanup(u.stop)
}

// stop shuts the upstream down; its port then refuses queries.
func (u *testUpstream) stop() {
	u.mu.Lock()
	servers := u.servers
	u.servers = nil
	u.mu.Unlock()
	for _, srv := range servers {
		_ = srv.Shutdown() // "server not started" when a test stopped it already
	}
}

func (u *testUpstream) record(q *dns.Msg, tcp bool) {
	proto := "udp"
	if tcp {
		proto = "tcp"
	}
	do := false
	if opt := q.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.queries = append(u.queries, fmt.Sprintf("%s %s %s do=%t cd=%t", proto, q.Question[0].Name, dns.TypeToString[q.Question[0].Qtype], do, q.CheckingDisabled))
}

// seen returns the queries received so far, as "udp www.example. A do=false cd=false".
func (u *testUpstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.queries...)
}

func (u *testUpstream) count() int { return len(u.seen()) }

// zoneAnswer answers every query with the records given in zone-file
// syntax: "ANSWER ...", "NS ..." and "EXTRA ..." prefixes pick the section.
func zoneAnswer(t *testing.T, rcode int, records ...string) answerFunc {
	t.Helper()
	var answer, ns, extra []dns.RR
	for _, r := range records {
		section, text, _ := strings.Cut(r, " ")
		rr := mustRR(t, text)
		switch section {
		case "ANSWER":
			answer = append(answer, rr)
		case "NS":
			ns = append(ns, rr)
		case "EXTRA":
			extra = append(extra, rr)
		default:
			t.Fatalf("record %q names no section", r)
		}
	}
	return func(q *dns.Msg, _ bool) *dns.Msg {
		r := new(dns.Msg)
		r.SetRcode(q, rcode)
		r.RecursionAvailable = true
		r.Answer, r.Ns, r.Extra = copyRRs(answer), copyRRs(ns), copyRRs(extra)
		if opt := q.IsEdns0(); opt != nil {
			r.SetEdns0(opt.UDPSize(), opt.Do())
		}
		return r
	}
}

// echoA answers any name with an A record of 192.0.2.1, TTL 300.
func echoA(t *testing.T) answerFunc {
	return func(q *dns.Msg, _ bool) *dns.Msg {
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = []dns.RR{mustRR(t, q.Question[0].Name+" 300 IN A 192.0.2.1")}
		return r
	}
}

func copyRRs(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
	}
	return out
}

func mustRR(t testing.TB, text string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(text)
	if err != nil {
		t.Fatalf("record %q: %v", text, err)
	}
	return rr
}

// query builds a client query: RD set, EDNS0 with DO when do is set.
func query(name string, qtype uint16, edns, do bool) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.Id = 0xbeef
	if edns {
		q.SetEdns0(1232, do)
	}
	return q
}

// ask resolves a plain query for name and type through f.
func ask(t *testing.T, f *Forwarder, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return f.Resolve(context.Background(), query(name, qtype, false, false))
}

// records renders a section in zone-file syntax, one record a line.
func records(rrs []dns.RR) string {
	var lines []string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		lines = append(lines, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return strings.Join(lines, "\n")
}

// eventually waits up to 5 s for cond, for what happens in the background.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func counter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

func failures(f *Forwarder, u netip.AddrPort, reason string) float64 {
	return testutil.ToFloat64(f.m.failures.WithLabelValues(u.String(), reason))
}

var errNoAnswer = errors.New("no answer")

// cached returns the fast path's answer for a plain query, unpacked.
func cached(t *testing.T, f *Forwarder, name string, qtype uint16) (*dns.Msg, error) {
	t.Helper()
	k, refused := requestKey(query(name, qtype, false, false))
	if refused != nil {
		t.Fatalf("query for %s refused", name)
	}
	b, ok := f.AppendCached(nil, k, 0x4242, 65535)
	if !ok {
		return nil, errNoAnswer
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack cached answer: %v", err)
	}
	return m, nil
}
