package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodenet/nodenet/dns/wire"
	"github.com/nodenet/nodenet/dns/zone"
	"github.com/nodenet/nodenet/hub"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeForwarder answers every name with one A record, 192.0.2.1, and counts how it was asked.
type fakeForwarder struct {
	cached   map[string]bool // names AppendCached finds
	block    chan struct{}   // when set, Resolve waits for it to close
	resolved atomic.Int32
	hits     atomic.Int32
}

func (f *fakeForwarder) Resolve(ctx context.Context, req *mdns.Msg) *mdns.Msg {
	f.resolved.Add(1)
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
		}
	}
	return f.answer(req)
}

func (f *fakeForwarder) answer(req *mdns.Msg) *mdns.Msg {
	resp := new(mdns.Msg)
	resp.SetReply(req)
	q := req.Question[0]
	if strings.HasPrefix(q.Name, "nx.") {
		resp.Rcode = mdns.RcodeNameError
		return resp
	}
	rr, _ := mdns.NewRR(q.Name + " 30 IN A 192.0.2.1")
	resp.Answer = []mdns.RR{rr}
	resp.SetEdns0(4096, false) // an upstream's OPT, which must not reach the client as is
	return resp
}

func (f *fakeForwarder) AppendCached(dst []byte, k wire.Key, id uint16, maxSize int) ([]byte, bool) {
	if !f.cached[k.Name] {
		return dst, false
	}
	f.hits.Add(1)
	req := new(mdns.Msg)
	req.SetQuestion(k.Name, k.Type)
	req.Id = id
	resp := f.answer(req)
	resp.Extra = nil // cached answers carry no OPT record: the server adds the client's
	out, err := resp.Pack()
	if err != nil || len(out) > maxSize {
		return dst, false
	}
	return append(dst, out...), true
}

func testZone(t *testing.T) *zone.Zone {
	t.Helper()
	z := zone.New(zone.Config{Domain: "cluster.local", TTL: 5})
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}},
	}
	z.Set("default", "web", hub.ServiceOf(svc), nil)
	for name, target := range map[string]string{"ext": "www.example.com", "alias": "web.default.svc.cluster.local", "dangling": "nope.default.svc.cluster.local"} {
		z.Set("default", name, hub.ServiceOf(&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: target},
		}), nil)
	}
	// A headless Service with more endpoints than fit in 512 bytes.
	hs := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "many"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: corev1.ClusterIPNone},
	}
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "many-1"}, AddressType: discoveryv1.AddressTypeIPv4}
	for i := range 60 {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.1.%d", i+1)}})
	}
	z.Set("default", "many", hub.ServiceOf(hs), []*hub.EndpointSlice{hub.EndpointSliceOf(sl)})
	z.MarkSynced()
	return z
}

type testServer struct {
	udp, tcp string
	fwd      *fakeForwarder
	cancel   context.CancelFunc
}

func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	fwd, _ := cfg.Forwarder.(*fakeForwarder)
	if cfg.Forwarder == nil {
		fwd = &fakeForwarder{cached: map[string]bool{"cached.example.": true}}
		cfg.Forwarder = fwd
	}
	if cfg.Zone == nil {
		cfg.Zone = testZone(t)
	}
	cfg.UDP, cfg.TCP = []*net.UDPConn{uc}, []*net.TCPListener{tl}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		uc.Close()
		tl.Close()
	})
	return &testServer{udp: uc.LocalAddr().String(), tcp: tl.Addr().String(), fwd: fwd, cancel: cancel}
}

func ask(t *testing.T, net, addr string, m *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: net, Timeout: 2 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s: %v", net, m.Question[0].Name, err)
	}
	return resp
}

func question(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

func TestServeZone(t *testing.T) {
	srv := startServer(t, Config{})
	// Mixed case, as a DNS 0x20 client sends it: the answer spells the question the same way.
	resp := ask(t, "udp", srv.udp, question("WeB.DeFault.svc.Cluster.Local.", mdns.TypeA))
	if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 1 || resp.Answer[0].(*mdns.A).A.String() != "10.96.0.20" {
		t.Fatalf("answer: %v", resp)
	}
	if resp.Question[0].Name != "WeB.DeFault.svc.Cluster.Local." || !resp.Authoritative || !resp.RecursionAvailable {
		t.Errorf("question %q, AA %v, RA %v", resp.Question[0].Name, resp.Authoritative, resp.RecursionAvailable)
	}
	if resp.IsEdns0() != nil {
		t.Error("an OPT record in the answer to a query without one")
	}
	m := question("nope.default.svc.cluster.local.", mdns.TypeA)
	m.SetEdns0(1232, true)
	resp = ask(t, "udp", srv.udp, m)
	if resp.Rcode != mdns.RcodeNameError || len(resp.Ns) != 1 {
		t.Errorf("NXDOMAIN: %v", resp)
	}
	if opt := resp.IsEdns0(); opt == nil || !opt.Do() {
		t.Errorf("OPT of the answer to an EDNS0 query with DO: %v", opt)
	}
	resp = ask(t, "tcp", srv.tcp, question("web.default.svc.cluster.local.", mdns.TypeA))
	if len(resp.Answer) != 1 {
		t.Errorf("over TCP: %v", resp)
	}
}

func TestServeTruncates(t *testing.T) {
	srv := startServer(t, Config{})
	resp := ask(t, "udp", srv.udp, question("many.default.svc.cluster.local.", mdns.TypeA))
	if !resp.Truncated || len(resp.Answer) >= 60 {
		t.Errorf("UDP without EDNS0: TC=%v with %d answers, want TC and fewer than 60", resp.Truncated, len(resp.Answer))
	}
	m := question("many.default.svc.cluster.local.", mdns.TypeA)
	m.SetEdns0(4096, false)
	resp = ask(t, "udp", srv.udp, m)
	if resp.Truncated || len(resp.Answer) != 60 {
		t.Errorf("UDP with a 4096-byte buffer: TC=%v with %d answers, want all 60 in 1232 bytes", resp.Truncated, len(resp.Answer))
	}
	resp = ask(t, "tcp", srv.tcp, question("many.default.svc.cluster.local.", mdns.TypeA))
	if resp.Truncated || len(resp.Answer) != 60 {
		t.Errorf("TCP: TC=%v with %d answers", resp.Truncated, len(resp.Answer))
	}
}

func TestServeForwards(t *testing.T) {
	srv := startServer(t, Config{})
	resp := ask(t, "udp", srv.udp, question("Cached.Example.", mdns.TypeA))
	if len(resp.Answer) != 1 || resp.Question[0].Name != "Cached.Example." || srv.fwd.hits.Load() != 1 || srv.fwd.resolved.Load() != 0 {
		t.Errorf("cached name: %v (hits %d, resolved %d)", resp, srv.fwd.hits.Load(), srv.fwd.resolved.Load())
	}
	m := question("cached.example.", mdns.TypeA)
	m.RecursionDesired = false
	m.SetEdns0(1232, true)
	resp = ask(t, "udp", srv.udp, m)
	if opt := resp.IsEdns0(); len(resp.Answer) != 1 || opt == nil || !opt.Do() || resp.RecursionDesired {
		t.Errorf("cached name asked with EDNS0, DO and no RD: OPT %v, RD %v, %v", opt, resp.RecursionDesired, resp)
	}
	resp = ask(t, "udp", srv.udp, question("www.example.org.", mdns.TypeA))
	if len(resp.Answer) != 1 || srv.fwd.resolved.Load() != 1 {
		t.Errorf("forwarded name: %v", resp)
	}
	if resp.IsEdns0() != nil {
		t.Error("the upstream's OPT record reached a client that sent none")
	}
	// Reverse names the zone does not own go upstream too.
	ask(t, "udp", srv.udp, question("1.2.0.192.in-addr.arpa.", mdns.TypePTR))
	if srv.fwd.resolved.Load() != 2 {
		t.Errorf("reverse name of an unknown address was not forwarded")
	}
}

func TestServeChasesAliases(t *testing.T) {
	srv := startServer(t, Config{})
	resp := ask(t, "udp", srv.udp, question("ext.default.svc.cluster.local.", mdns.TypeA))
	if len(resp.Answer) != 2 || resp.Answer[0].Header().Rrtype != mdns.TypeCNAME || resp.Answer[1].Header().Name != "www.example.com." {
		t.Errorf("ExternalName to an outside name: %v", resp)
	}
	resp = ask(t, "udp", srv.udp, question("alias.default.svc.cluster.local.", mdns.TypeA))
	if len(resp.Answer) != 2 || resp.Answer[1].(*mdns.A).A.String() != "10.96.0.20" {
		t.Errorf("ExternalName to a cluster name: %v", resp)
	}
	resp = ask(t, "udp", srv.udp, question("dangling.default.svc.cluster.local.", mdns.TypeA))
	if resp.Rcode != mdns.RcodeNameError || len(resp.Answer) != 1 {
		t.Errorf("ExternalName to a missing cluster name: %v", resp)
	}
}

func TestServeBadRequests(t *testing.T) {
	srv := startServer(t, Config{})
	c, err := net.Dial("udp", srv.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(b []byte) *mdns.Msg {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return nil
		}
		var m mdns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatalf("unpack: %v", err)
		}
		return &m
	}
	if m := send([]byte{1, 2, 3}); m != nil {
		t.Errorf("a 3-byte packet was answered: %v", m)
	}
	if m := send([]byte{0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, 'a'}); m == nil || m.Id != 0xabcd || m.Rcode != mdns.RcodeFormatError {
		t.Errorf("a truncated question: %v, want FORMERR", m)
	}
	notify := question("web.default.svc.cluster.local.", mdns.TypeSOA)
	notify.Opcode = mdns.OpcodeNotify
	b, _ := notify.Pack()
	if m := send(b); m == nil || m.Rcode != mdns.RcodeNotImplemented || m.Opcode != mdns.OpcodeNotify {
		t.Errorf("NOTIFY: %v, want NOTIMP", m)
	}
	// The server still answers.
	if resp := ask(t, "udp", srv.udp, question("web.default.svc.cluster.local.", mdns.TypeA)); len(resp.Answer) != 1 {
		t.Errorf("after bad requests: %v", resp)
	}
}

// TestUpstreamBudget: with every upstream place taken, a query that needs an upstream gets
// SERVFAIL at once, and names answered from memory are unaffected.
func TestUpstreamBudget(t *testing.T) {
	fwd := &fakeForwarder{block: make(chan struct{})}
	srv := startServer(t, Config{Forwarder: fwd, MaxUpstreamQueries: 1})
	c, err := net.Dial("udp", srv.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := question("slow.example.", mdns.TypeA).Pack()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	for fwd.resolved.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if resp := ask(t, "udp", srv.udp, question("other.example.", mdns.TypeA)); resp.Rcode != mdns.RcodeServerFailure {
		t.Errorf("over budget: rcode %d, want SERVFAIL", resp.Rcode)
	}
	if resp := ask(t, "udp", srv.udp, question("web.default.svc.cluster.local.", mdns.TypeA)); len(resp.Answer) != 1 {
		t.Errorf("a cluster name while the budget is spent: %v", resp)
	}
	close(fwd.block)
	buf := make([]byte, 512)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(buf); err != nil {
		t.Errorf("the blocked query was never answered: %v", err)
	}
}

// TestHoldUntilReady: queries sent before the zone is ready wait in the socket and get real
// answers once it is.
func TestHoldUntilReady(t *testing.T) {
	ready := make(chan struct{})
	srv := startServer(t, Config{Ready: ready, HoldLimit: time.Minute})
	got := make(chan *mdns.Msg, 1)
	go func() {
		c := &mdns.Client{Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(question("web.default.svc.cluster.local.", mdns.TypeA), srv.udp)
		if err != nil {
			resp = nil
		}
		got <- resp
	}()
	select {
	case r := <-got:
		t.Fatalf("answered before the zone was ready: %v", r)
	case <-time.After(200 * time.Millisecond):
	}
	close(ready)
	if r := <-got; r == nil || len(r.Answer) != 1 {
		t.Errorf("after ready: %v", r)
	}
}

// TestServeAnswersFollowChanges: an answer packed once is served again only while the zone has
// not changed since, so a changed Service is answered anew at once.
func TestServeAnswersFollowChanges(t *testing.T) {
	z := testZone(t)
	srv := startServer(t, Config{Zone: z})
	addrOf := func(name string) string {
		resp := ask(t, "udp", srv.udp, question(name, mdns.TypeA))
		if len(resp.Answer) != 1 || resp.Question[0].Name != name {
			t.Fatalf("%s: %v", name, resp)
		}
		return resp.Answer[0].(*mdns.A).A.String()
	}
	for _, name := range []string{"web.default.svc.cluster.local.", "WEB.default.svc.cluster.local."} {
		if got := addrOf(name); got != "10.96.0.20" {
			t.Fatalf("%s: %s", name, got)
		}
	}
	z.Set("default", "web", hub.ServiceOf(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.21", ClusterIPs: []string{"10.96.0.21"}},
	}), nil)
	if got := addrOf("Web.Default.svc.cluster.local."); got != "10.96.0.21" {
		t.Errorf("after the Service changed: %s, want 10.96.0.21", got)
	}
	z.Set("default", "web", nil, nil)
	if resp := ask(t, "udp", srv.udp, question("web.default.svc.cluster.local.", mdns.TypeA)); resp.Rcode != mdns.RcodeNameError {
		t.Errorf("after the Service was deleted: %v", resp)
	}
}

// TestServeIPv6 serves on an IPv6 socket: the batched reads and writes work for both families.
func TestServeIPv6(t *testing.T) {
	uc, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[::1]:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	s, err := New(Config{Zone: testZone(t), Forwarder: &fakeForwarder{}, UDP: []*net.UDPConn{uc}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	resp := ask(t, "udp", uc.LocalAddr().String(), question("web.default.svc.cluster.local.", mdns.TypeA))
	if len(resp.Answer) != 1 {
		t.Errorf("over IPv6: %v", resp)
	}
}
