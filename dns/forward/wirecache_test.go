package forward

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func TestTTLOffsets(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	m.Response = true
	m.Compress = true
	m.Answer = []dns.RR{
		mustRR(t, "www.example.com. 1 IN CNAME edge.example.com."),
		mustRR(t, "edge.example.com. 2 IN A 192.0.2.1"),
	}
	m.Ns = []dns.RR{mustRR(t, "example.com. 3 IN NS ns.example.com.")}
	m.Extra = []dns.RR{mustRR(t, "ns.example.com. 4 IN A 192.0.2.53")}
	m.SetEdns0(1232, true) // its TTL field holds flags, not a TTL
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	offsets, err := ttlOffsets(b)
	if err != nil {
		t.Fatalf("ttlOffsets: %v", err)
	}
	var got []uint32
	for _, off := range offsets {
		got = append(got, binary.BigEndian.Uint32(b[off:]))
	}
	if len(got) != 4 || got[0] != 1 || got[1] != 2 || got[2] != 3 || got[3] != 4 {
		t.Errorf("TTLs at the offsets = %v, want [1 2 3 4]", got)
	}

	for _, cut := range []int{5, 20, len(b) - 3} {
		if _, err := ttlOffsets(b[:cut]); err == nil {
			t.Errorf("ttlOffsets accepted the message cut at %d bytes", cut)
		}
	}
	if _, err := ttlOffsets(append(b, 0)); err == nil {
		t.Error("ttlOffsets accepted a trailing byte")
	}
}

func TestAppendCachedRespectsMaxSize(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess, "ANSWER www.example.com. 300 IN A 192.0.2.1"))
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	ask(t, f, "www.example.com.", dns.TypeA)
	k, _ := requestKey(query("www.example.com.", dns.TypeA, false, false))
	size := len(f.cache.get(k).wire)

	dst := []byte("prefix")
	if got, ok := f.AppendCached(dst, k, 1, size-1); ok || string(got) != "prefix" {
		t.Errorf("AppendCached with maxSize below the answer = %q, %t; want dst unchanged, false", got, ok)
	}
	got, ok := f.AppendCached(dst, k, 1, size)
	if !ok || len(got) != len("prefix")+size || string(got[:6]) != "prefix" {
		t.Errorf("AppendCached with maxSize of the answer = %d bytes, %t", len(got), ok)
	}
}
