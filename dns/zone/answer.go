package zone

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// Response is the zone's part of an answer. The server copies the sections into its reply and
// sets the flags; for an alias it resolves Alias itself and appends what it finds.
type Response struct {
	Rcode               int
	Answer, Ns, Extra   []dns.RR
	Alias               string // an ExternalName target to resolve for the same type, fully qualified
	NotSynced           bool   // the zone has not seen the whole cluster yet (Rcode is SERVFAIL)
	OutsideZone         bool   // the name is not in the zone: someone else answers it
	AuthoritativeAnswer bool
}

// Answer answers qtype for name, which must be lower case and fully qualified (as wire.Query
// gives it). Names outside the zone get OutsideZone.
func (z *Zone) Answer(name string, qtype uint16) Response {
	rel, ok := z.relative(name)
	if !ok {
		return Response{OutsideZone: true}
	}
	z.mu.RLock()
	defer z.mu.RUnlock()
	if !z.synced {
		return Response{Rcode: dns.RcodeServerFailure, NotSynced: true}
	}
	a := answerer{z: z, name: name, qtype: qtype}
	labels := splitLabels(rel)
	switch {
	case len(labels) == 0:
		a.apex()
	case labels[len(labels)-1] == "svc":
		a.services(labels[:len(labels)-1])
	case labels[len(labels)-1] == "pod":
		a.pods(labels[:len(labels)-1])
	case rel == "dns-version":
		a.schemaVersion()
	case rel == "ns.dns":
		a.nameserver(name)
	case rel == "dns":
		a.noData() // the empty parent of ns.dns
	default:
		a.nxdomain()
	}
	return a.r
}

// relative strips the zone from name: "web.default.svc" for "web.default.svc.cluster.local.",
// "" for the apex.
func (z *Zone) relative(name string) (string, bool) {
	if name == z.origin {
		return "", true
	}
	rel, ok := strings.CutSuffix(name, "."+z.origin)
	return rel, ok && rel != ""
}

func splitLabels(rel string) []string {
	if rel == "" {
		return nil
	}
	return strings.Split(rel, ".")
}

// answerer builds one Response under the zone's read lock.
type answerer struct {
	z     *Zone
	name  string
	qtype uint16
	r     Response
}

func (a *answerer) hdr(name string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: a.z.ttl}
}

func (a *answerer) soa() dns.RR {
	return &dns.SOA{
		Hdr:     a.hdr(a.z.origin, dns.TypeSOA),
		Ns:      "ns.dns." + a.z.origin,
		Mbox:    "hostmaster." + a.z.origin,
		Serial:  a.z.serial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  a.z.ttl,
	}
}

// noData is an existing name without records of the asked type (RFC 2308: the SOA in authority).
func (a *answerer) noData() {
	a.r.Rcode = dns.RcodeSuccess
	a.r.AuthoritativeAnswer = true
	a.r.Ns = []dns.RR{a.soa()}
}

func (a *answerer) nxdomain() {
	a.r.Rcode = dns.RcodeNameError
	a.r.AuthoritativeAnswer = true
	a.r.Ns = []dns.RR{a.soa()}
}

func (a *answerer) answer(rrs ...dns.RR) {
	if len(rrs) == 0 {
		a.noData()
		return
	}
	a.r.Rcode = dns.RcodeSuccess
	a.r.AuthoritativeAnswer = true
	a.r.Answer = append(a.r.Answer, rrs...)
}

func (a *answerer) apex() {
	switch a.qtype {
	case dns.TypeSOA:
		a.answer(a.soa())
	case dns.TypeNS:
		a.answer(&dns.NS{Hdr: a.hdr(a.z.origin, dns.TypeNS), Ns: "ns.dns." + a.z.origin})
		a.r.Extra = a.addresses("ns.dns."+a.z.origin, a.z.nameservers, dns.TypeA, dns.TypeAAAA)
	default:
		a.noData()
	}
}

func (a *answerer) schemaVersion() {
	if a.qtype != dns.TypeTXT {
		a.noData()
		return
	}
	// The spec gives this record a TTL of its own: it changes only with the implementation.
	a.answer(&dns.TXT{Hdr: dns.RR_Header{Name: a.name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 28800}, Txt: []string{SchemaVersion}})
}

func (a *answerer) nameserver(name string) {
	a.answer(a.addresses(name, a.z.nameservers, a.qtype)...)
}

// addresses turns addrs into A and AAAA records of name, for the given types only.
func (a *answerer) addresses(name string, addrs []netip.Addr, types ...uint16) []dns.RR {
	var out []dns.RR
	for _, t := range types {
		for _, ip := range addrs {
			if rr := a.address(name, ip, t); rr != nil {
				out = append(out, rr)
			}
		}
	}
	return out
}

// address is the A or AAAA record of name for ip, nil when ip is of the other family or qtype
// is neither.
func (a *answerer) address(name string, ip netip.Addr, qtype uint16) dns.RR {
	switch {
	case qtype == dns.TypeA && ip.Is4():
		b := ip.As4()
		return &dns.A{Hdr: a.hdr(name, dns.TypeA), A: b[:]}
	case qtype == dns.TypeAAAA && ip.Is6():
		b := ip.As16()
		return &dns.AAAA{Hdr: a.hdr(name, dns.TypeAAAA), AAAA: b[:]}
	}
	return nil
}

// pods answers <a-b-c-d>.<namespace>.pod.<zone> with the address the name spells, whichever
// pod has it, as CoreDNS's "pods insecure" mode does.
func (a *answerer) pods(labels []string) {
	switch len(labels) {
	case 0, 1: // pod.<zone> and <namespace>.pod.<zone>: parents of every pod name
		a.noData()
	case 2:
		ip, ok := undash(labels[0])
		if !ok {
			a.nxdomain()
			return
		}
		a.answer(a.addresses(a.name, []netip.Addr{ip}, a.qtype)...)
	default:
		a.nxdomain()
	}
}
