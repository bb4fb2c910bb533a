package zone

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func TestReverse(t *testing.T) {
	z := testZone(t)
	tests := []struct {
		Case
		forwarded bool // not an address the zone knows: the server forwards it
	}{
		{Case: Case{Qname: "1.0.0.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{"1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."}}},
		{Case: Case{Qname: "3.0.0.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{"3.0.0.10.in-addr.arpa. 5 IN PTR svc-dual-stack.testns.svc.cluster.local."}}},
		{Case: Case{Qname: "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.ip6.arpa.", Qtype: dns.TypePTR,
			Answer: []string{"3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.ip6.arpa. 5 IN PTR svc-dual-stack.testns.svc.cluster.local."}}},
		// Endpoints of headless Services, by hostname or dashed address.
		{Case: Case{Qname: "2.0.0.172.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{"2.0.0.172.in-addr.arpa. 5 IN PTR 172-0-0-2.hdls1.testns.svc.cluster.local."}}},
		{Case: Case{Qname: "4.0.0.172.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{"4.0.0.172.in-addr.arpa. 5 IN PTR dup-name.hdls1.testns.svc.cluster.local."}}},
		{Case: Case{Qname: "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.8.7.6.5.ip6.arpa.", Qtype: dns.TypePTR,
			Answer: []string{"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.8.7.6.5.ip6.arpa. 5 IN PTR 5678-abcd--1.hdls1.testns.svc.cluster.local."}}},
		{Case: Case{Qname: "1.0.0.10.in-addr.arpa.", Qtype: dns.TypeA, Ns: []string{soa}}},
		// An endpoint of a Service with a cluster IP, a not-ready endpoint, an unknown
		// address and partial reverse names are not the zone's.
		{Case: Case{Qname: "1.0.0.172.in-addr.arpa.", Qtype: dns.TypePTR}, forwarded: true},
		{Case: Case{Qname: "6.0.0.172.in-addr.arpa.", Qtype: dns.TypePTR}, forwarded: true},
		{Case: Case{Qname: "9.9.9.9.in-addr.arpa.", Qtype: dns.TypePTR}, forwarded: true},
		{Case: Case{Qname: "0.0.10.in-addr.arpa.", Qtype: dns.TypePTR}, forwarded: true},
		{Case: Case{Qname: "01.0.0.10.in-addr.arpa.", Qtype: dns.TypePTR}, forwarded: true},
	}
	for _, tc := range tests {
		t.Run(dns.TypeToString[tc.Qtype]+" "+tc.Qname, func(t *testing.T) {
			got, ok := z.Reverse(tc.Qname, tc.Qtype)
			if ok == tc.forwarded {
				t.Fatalf("Reverse answered = %v, want %v", ok, !tc.forwarded)
			}
			if ok {
				checkResponse(t, tc.Case, got)
			}
		})
	}
}

func TestReverseAddr(t *testing.T) {
	for _, a := range []string{"10.96.0.1", "0.0.0.0", "255.255.255.255", "fd00::1", "2001:db8:ffff::abcd:1"} {
		addr := netip.MustParseAddr(a)
		name, err := dns.ReverseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := reverseAddr(name)
		if !ok || got != addr {
			t.Errorf("reverseAddr(%q) = %v, %v; want %v", name, got, ok, addr)
		}
	}
}
