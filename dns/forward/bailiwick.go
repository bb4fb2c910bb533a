package forward

import (
	"slices"

	"github.com/miekg/dns"

	"github.com/nodenet/nodenet/dns/wire"
)

// maxChain bounds the CNAME chain followed from the question name, against
// loops and absurd chains.
const maxChain = 16

// sanitize strips resp of the records that are not about the question,
// before anything is cached or passed on, and returns how many it dropped:
//
//   - answer: records of the question name and of the CNAME chain from it
//     (with the DNAMEs that synthesized it), of the question's type, and
//     their signatures;
//   - authority: records at or below the zone the answer is about, the
//     deepest owner of an SOA or NS record above the chain's last name;
//   - additional: records at or below that zone, or below the chain's last
//     name when the authority names none;
//
// and in every section only the question's class. The OPT and TSIG records
// go too, uncounted: they are about the exchange with the upstream, and the
// server answers with its own OPT.
//
// Each cached response only ever answers its own question, so stray records
// could not poison other names here; dropping them keeps them from the
// caches of the clients.
func sanitize(resp *dns.Msg, k wire.Key) int {
	resp.Extra = slices.DeleteFunc(resp.Extra, func(rr dns.RR) bool {
		t := rr.Header().Rrtype
		return t == dns.TypeOPT || t == dns.TypeTSIG // about the exchange, not the name
	})
	before := len(resp.Answer) + len(resp.Ns) + len(resp.Extra)
	chain := cnameChain(resp.Answer, k)
	resp.Answer = slices.DeleteFunc(resp.Answer, func(rr dns.RR) bool { return !onChain(rr, chain, k) })

	last := chain[len(chain)-1]
	zone := ""
	for _, rr := range resp.Ns {
		h := rr.Header()
		if (h.Rrtype == dns.TypeSOA || h.Rrtype == dns.TypeNS) && h.Class == k.Class && dns.IsSubDomain(h.Name, last) &&
			(zone == "" || dns.CountLabel(h.Name) > dns.CountLabel(zone)) {
			zone = h.Name
		}
	}
	resp.Ns = slices.DeleteFunc(resp.Ns, func(rr dns.RR) bool {
		return zone == "" || rr.Header().Class != k.Class || !dns.IsSubDomain(zone, rr.Header().Name)
	})
	extraZone := zone
	if extraZone == "" {
		extraZone = last
	}
	resp.Extra = slices.DeleteFunc(resp.Extra, func(rr dns.RR) bool {
		h := rr.Header()
		return h.Class != k.Class || !dns.IsSubDomain(extraZone, h.Name)
	})
	return before - len(resp.Answer) - len(resp.Ns) - len(resp.Extra)
}

// cnameChain is the question name followed by the CNAME targets reached
// from it in the answer section, whatever their order there.
func cnameChain(answer []dns.RR, k wire.Key) []string {
	chain := []string{k.Name}
	if k.Type == dns.TypeCNAME || k.Type == dns.TypeANY {
		return chain // the CNAME itself is the answer; nothing to follow
	}
	for grew := true; grew && len(chain) < maxChain; {
		grew = false
		for _, rr := range answer {
			c, ok := rr.(*dns.CNAME)
			if !ok || c.Hdr.Class != k.Class || !slices.Contains(chain, dns.CanonicalName(c.Hdr.Name)) {
				continue
			}
			if t := dns.CanonicalName(c.Target); !slices.Contains(chain, t) && len(chain) < maxChain {
				chain = append(chain, t)
				grew = true
			}
		}
	}
	return chain
}

// onChain says whether an answer record belongs to the answer for k.
func onChain(rr dns.RR, chain []string, k wire.Key) bool {
	h := rr.Header()
	if h.Class != k.Class {
		return false
	}
	typ := h.Rrtype
	if sig, ok := rr.(*dns.RRSIG); ok {
		typ = sig.TypeCovered
	}
	if typ == dns.TypeDNAME && k.Type != dns.TypeDNAME {
		// A DNAME stands above the names it rewrites.
		return slices.ContainsFunc(chain, func(name string) bool { return dns.IsSubDomain(h.Name, name) })
	}
	if !slices.Contains(chain, dns.CanonicalName(h.Name)) {
		return false
	}
	return typ == k.Type || typ == dns.TypeCNAME || k.Type == dns.TypeANY
}
