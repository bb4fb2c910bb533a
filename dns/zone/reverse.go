package zone

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// Reverse answers a PTR query for the address of a Service or of a headless Service's endpoint.
// ok is false for names that are not reverse names of such an address: the zone does not own
// the reverse trees, and the server forwards those queries.
func (z *Zone) Reverse(name string, qtype uint16) (r Response, ok bool) {
	addr, ok := reverseAddr(name)
	if !ok {
		return r, false
	}
	z.mu.RLock()
	defer z.mu.RUnlock()
	targets, ok := z.reverse[addr]
	if !ok {
		return r, false
	}
	a := answerer{z: z, name: name, qtype: qtype}
	if qtype != dns.TypePTR {
		// The SOA of the cluster zone stands in for the reverse zone's, as CoreDNS's does.
		a.noData()
		return a.r, true
	}
	rrs := make([]dns.RR, 0, len(targets))
	for _, t := range targets {
		rrs = append(rrs, &dns.PTR{Hdr: a.hdr(name, dns.TypePTR), Ptr: t})
	}
	a.answer(rrs...)
	return a.r, true
}

// reverseAddr reads a full reverse name: d.c.b.a.in-addr.arpa. or 32 nibbles under ip6.arpa.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa."); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, p := range parts {
			v, err := strconv.ParseUint(p, 10, 8)
			if err != nil || (len(p) > 1 && p[0] == '0') {
				return netip.Addr{}, false
			}
			b[3-i] = byte(v)
		}
		return netip.AddrFrom4(b), true
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa."); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, p := range parts {
			v, err := strconv.ParseUint(p, 16, 4)
			if err != nil || len(p) != 1 {
				return netip.Addr{}, false
			}
			nibble := 31 - i
			b[nibble/2] |= byte(v) << (4 * (1 - nibble%2))
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}
