package proxy

import (
	"bytes"
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// pairKey is a hairpin pair's address in 16 bytes (IPv4 as a mapped address). The Syncer counts
// one pair per endpoint address: at 100,000 endpoints a key without pointers is a third of the
// size of an elemKey, and the collector never scans the map that holds them.
type pairKey [16]byte

func pairKeyOf(a netip.Addr) pairKey { return a.As16() }

// elemKey is the pair's element in its family's hairpin set. Endpoint addresses are unmapped, so
// a mapped address is always an IPv4 one.
func (k pairKey) elemKey() elemKey {
	a := netip.AddrFrom16(k).Unmap()
	return elemKey{setHairpin(familyOf(a)), MapKey{Addr: a}}
}

// pairCounts counts, per endpoint address, the fragments holding its hairpin pair. Nearly every
// address is an IPv4 one, counted under a 4-byte key: at 100,000 endpoints that map is under half
// the size of one with 16-byte keys.
type pairCounts struct {
	v4 map[[4]byte]int32
	v6 map[pairKey]int32
}

func newPairCounts() pairCounts {
	return pairCounts{v4: map[[4]byte]int32{}, v6: map[pairKey]int32{}}
}

// ipv4 is the IPv4 address of a mapped key.
func (k pairKey) ipv4() ([4]byte, bool) {
	a := netip.AddrFrom16(k)
	if !a.Is4In6() {
		return [4]byte{}, false
	}
	return a.Unmap().As4(), true
}

// add adds n (1 or -1) to the count of pk, which is forgotten at zero.
func (c pairCounts) add(pk pairKey, n int32) {
	if a, ok := pk.ipv4(); ok {
		addCount(c.v4, a, n)
	} else {
		addCount(c.v6, pk, n)
	}
}

func addCount[K comparable](m map[K]int32, k K, n int32) {
	if m[k] += n; m[k] <= 0 {
		delete(m, k)
	}
}

// count is the number of fragments holding pk.
func (c pairCounts) count(pk pairKey) int32 {
	if a, ok := pk.ipv4(); ok {
		return c.v4[a]
	}
	return c.v6[pk]
}

func (c pairCounts) len() int { return len(c.v4) + len(c.v6) }

// keys iterates over the pairs counted.
func (c pairCounts) keys() iter.Seq[pairKey] {
	return func(yield func(pairKey) bool) {
		for a := range c.v4 {
			if !yield(pairKeyOf(netip.AddrFrom4(a))) {
				return
			}
		}
		for pk := range c.v6 {
			if !yield(pk) {
				return
			}
		}
	}
}

// pairChanges takes the hairpin pairs out of have, read from the kernel, and returns the pairs
// counted but not there and those there but not counted, sorted. The pairs go to the kernel
// this way, outside the Model and the Plan's elements: at 100,000 endpoints the general
// elements would cost about a kilobyte per pair on the way.
func (s *Syncer) pairChanges(have *Digest) (add, del []pairKey) {
	there := map[pairKey]bool{}
	for ek := range have.Elems {
		if !isHairpinSet(ek.Map) {
			continue
		}
		delete(have.Elems, ek)
		pk := pairKeyOf(ek.Key.Addr)
		there[pk] = true
		if s.pairs.count(pk) <= 0 {
			del = append(del, pk)
		}
	}
	for pk := range s.pairs.keys() {
		if !there[pk] {
			add = append(add, pk)
		}
	}
	slices.SortFunc(add, comparePairs)
	slices.SortFunc(del, comparePairs)
	return add, del
}

// isHairpinSet says whether a set holds hairpin pairs, which the Syncer counts and writes apart
// from the Model's elements.
func isHairpinSet(name string) bool { return name == setHairpin(IPv4) || name == setHairpin(IPv6) }

func comparePairs(a, b pairKey) int { return bytes.Compare(a[:], b[:]) }

// pairDrift takes the hairpin pairs out of have, read from the kernel, and describes how they
// differ from the pairs counted ("" when they do not): the ledger it is compared with next holds
// no pairs.
func (s *Syncer) pairDrift(have *Digest) string {
	add, del := s.pairChanges(have)
	var out []string
	if len(add) > 0 {
		out = append(out, fmt.Sprintf("%d hairpin pairs missing", len(add)))
	}
	if len(del) > 0 {
		out = append(out, fmt.Sprintf("%d hairpin pairs extra", len(del)))
	}
	return strings.Join(out, ", ")
}

// pairElements queues the addition or deletion of hairpin pairs, per family's set.
func pairElements(c *nftables.Conn, t *nftables.Table, pairs []pairKey, del bool) error {
	bySet := map[string][]nftables.SetElement{}
	for _, pk := range pairs {
		ek := pk.elemKey()
		def := mapDefs[ek.Map]
		key, err := mapKeyBytes(def.Family, def.Key, ek.Key)
		if err != nil {
			return fmt.Errorf("set %s key %v: %w", ek.Map, ek.Key, err)
		}
		bySet[ek.Map] = append(bySet[ek.Map], nftables.SetElement{Key: key})
	}
	for _, name := range slices.Sorted(maps.Keys(bySet)) {
		ns, err := buildMap(t, mapDefs[name])
		if err != nil {
			return err
		}
		if err := setElems(c, ns.set, bySet[name], del); err != nil {
			return fmt.Errorf("set %s elements: %w", name, err)
		}
	}
	return nil
}
