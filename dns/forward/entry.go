package forward

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/nodenet/nodenet/dns/wire"
)

type entryKind uint8

const (
	kindSuccess  entryKind = iota // NOERROR with answers
	kindDenial                    // NXDOMAIN or NODATA, with the zone's SOA
	kindServfail                  // SERVFAIL from upstream, kept briefly
	kindCount
)

func (k entryKind) metricType() string {
	if k == kindSuccess {
		return typeSuccess
	}
	return typeDenial
}

// entryOverhead approximates what an entry costs beyond its wire bytes: the
// struct, its map slot and key, slice headers.
const entryOverhead = 256

// An entry is one cached response. Everything but the atomics is fixed at
// creation; a refresh replaces the entry.
type entry struct {
	key wire.Key
	// wire is the response packed with ID 0, RD set and no OPT record; the
	// question is the key's, lower-cased.
	wire []byte
	// ttlOffsets are the offsets in wire of every record's TTL field.
	ttlOffsets []uint16
	kind       entryKind
	stored     time.Duration // by the Forwarder's clock
	// ttl is the entry's lifetime in whole seconds, clamped; every record
	// is served with what remains of it.
	ttl      uint32
	lifetime time.Duration
	// prefetchAfter is the age from which a popular entry is refreshed.
	prefetchAfter time.Duration
	size          int64

	// lastUsed is when the entry last answered, by the Forwarder's clock,
	// updated at most every usedResolution.
	lastUsed atomic.Int64
	// streak counts questions with no gap of PrefetchWindow between them,
	// up to PrefetchHits.
	streak     atomic.Int32
	prefetched atomic.Bool
	// lastFailure is when a refresh of the entry last failed, by the
	// Forwarder's clock; 0 if none has.
	lastFailure atomic.Int64
}

// newEntry makes a cache entry of a sanitized upstream response to k, or
// returns false when the response must not be cached.
func newEntry(resp *dns.Msg, k wire.Key, now time.Duration, cfg *Config) (*entry, bool, error) {
	kind, ttl, ok := cacheLifetime(resp, cfg)
	if !ok {
		return nil, false, nil
	}
	m := &dns.Msg{
		MsgHdr:   resp.MsgHdr,
		Compress: true,
		Question: []dns.Question{{Name: k.Name, Qtype: k.Type, Qclass: k.Class}},
		Answer:   resp.Answer,
		Ns:       resp.Ns,
		Extra:    resp.Extra,
	}
	m.Id = 0
	m.Response = true
	m.RecursionDesired = true
	m.Truncated = false
	m.CheckingDisabled = k.CD
	b, err := m.Pack()
	if err != nil {
		return nil, false, fmt.Errorf("pack response to %s: %w", k.Name, err)
	}
	offsets, err := ttlOffsets(b)
	if err != nil {
		return nil, false, fmt.Errorf("index response to %s: %w", k.Name, err)
	}
	lifetime := time.Duration(ttl) * time.Second
	e := &entry{
		key:           k,
		wire:          b,
		ttlOffsets:    offsets,
		kind:          kind,
		stored:        now,
		ttl:           ttl,
		lifetime:      lifetime,
		prefetchAfter: lifetime - max(lifetime*time.Duration(cfg.PrefetchPercent)/100, time.Second),
		size:          int64(len(b)+2*len(offsets)+len(k.Name)) + entryOverhead,
	}
	e.lastUsed.Store(int64(now))
	return e, true, nil
}

// cacheLifetime classifies a response and says how long it may be cached in
// whole seconds: the smallest TTL of its records clamped to
// [MinTTL, MaxTTL], for a denial the SOA's negative TTL (RFC 2308: the
// lesser of its TTL and MINIMUM) clamped to [MinTTL, MaxNegativeTTL]. A
// denial without SOA is not cached (RFC 2308 section 5), nor anything but
// NOERROR, NXDOMAIN and SERVFAIL.
func cacheLifetime(resp *dns.Msg, cfg *Config) (entryKind, uint32, bool) {
	switch {
	case resp.Rcode == dns.RcodeServerFailure:
		return kindServfail, seconds(cfg.ServfailTTL), true
	case resp.Rcode == dns.RcodeSuccess && len(resp.Answer) > 0:
		return kindSuccess, clampTTL(minRecordTTL(resp, false), cfg.MinTTL, cfg.MaxTTL), true
	case resp.Rcode == dns.RcodeNameError || resp.Rcode == dns.RcodeSuccess:
		if !hasSOA(resp.Ns) {
			return 0, 0, false
		}
		return kindDenial, clampTTL(minRecordTTL(resp, true), cfg.MinTTL, cfg.MaxNegativeTTL), true
	}
	return 0, 0, false
}

// minRecordTTL is the smallest TTL of the response's records; with denial
// an authority SOA counts with its negative TTL.
func minRecordTTL(resp *dns.Msg, denial bool) uint32 {
	least := uint32(1<<31 - 1) // RFC 2181 section 8: larger TTLs mean this
	for _, section := range [][]dns.RR{resp.Answer, resp.Ns, resp.Extra} {
		for _, rr := range section {
			ttl := rr.Header().Ttl
			if soa, ok := rr.(*dns.SOA); ok && denial {
				ttl = min(ttl, soa.Minttl)
			}
			least = min(least, ttl)
		}
	}
	return least
}

func hasSOA(rrs []dns.RR) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeSOA {
			return true
		}
	}
	return false
}

func clampTTL(ttl uint32, lo, hi time.Duration) uint32 {
	return min(max(ttl, seconds(lo)), seconds(hi))
}

func seconds(d time.Duration) uint32 { return uint32(d / time.Second) }

// fresh says whether the entry may still answer as it is, given its age.
func (e *entry) fresh(age time.Duration) bool { return age < e.lifetime }

// remaining is the TTL to serve at age, at least 1 for a fresh entry. A
// negative age, from a coarse reading of the clock, counts as none.
func (e *entry) remaining(age time.Duration) uint32 { return e.ttl - uint32(max(age, 0)/time.Second) }

// appendTo appends the response with the ID and every record's TTL set.
func (e *entry) appendTo(dst []byte, id uint16, ttl uint32) []byte {
	start := len(dst)
	dst = append(dst, e.wire...)
	b := dst[start:]
	b[0], b[1] = byte(id>>8), byte(id)
	for _, off := range e.ttlOffsets {
		b[off], b[off+1], b[off+2], b[off+3] = byte(ttl>>24), byte(ttl>>16), byte(ttl>>8), byte(ttl)
	}
	return dst
}
