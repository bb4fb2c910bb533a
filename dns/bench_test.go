package dns

import (
	"testing"

	mdns "github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/wire"
)

// BenchmarkFast measures the work of answering from memory, without the sockets: the three query
// mixes of the benchmark in bench/dns.
func BenchmarkFast(b *testing.B) {
	t := &testing.T{}
	s := &Server{cfg: Config{Zone: testZone(t), Forwarder: &fakeForwarder{cached: map[string]bool{"cached.example.": true}}}, log: zap.NewNop(), metrics: newMetrics(), answers: newAnswerCache()}
	for _, bc := range []struct{ name, qname string }{
		{"cluster name", "web.default.svc.cluster.local."},
		{"search-path miss", "www.example.com.default.svc.cluster.local."},
		{"cached name", "cached.example."},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := question(bc.qname, mdns.TypeA)
			m.SetEdns0(1232, false)
			req, _ := m.Pack()
			out := make([]byte, 0, 4096)
			names := wire.NewNames()
			b.ReportAllocs()
			for b.Loop() {
				a, _, ok := s.fast(req, out[:0], true, names)
				if !ok || len(a.wire) == 0 {
					b.Fatal("not answered from memory")
				}
				s.metrics.request("udp", mdns.TypeA)
				s.metrics.response(a.rcode, a.source, 0.00001)
			}
		})
	}
}
