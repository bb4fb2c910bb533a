package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
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

// withPairs fills the hairpin sets of the main table's skeleton with the pairs counted.
func (s *Syncer) withPairs(main Model) Model {
	m := main
	m.Maps = slices.Clone(main.Maps)
	for i := range m.Maps {
		if !m.Maps[i].Plain {
			continue
		}
		var els []MapElement
		for pk := range s.pairs {
			if ek := pk.elemKey(); ek.Map == m.Maps[i].Name {
				els = append(els, MapElement{Key: ek.Key})
			}
		}
		slices.SortFunc(els, func(a, c MapElement) int { return compareKeys(a.Key, c.Key) })
		m.Maps[i].Elements = els
	}
	return m
}

// dropPairs removes the hairpin pairs from a digest bound for the ledger: pairs holds them
// already, and a second copy would double the largest part of the Syncer's memory.
func dropPairs(d *Digest) {
	for ek := range d.Elems {
		if mapDefs[ek.Map].Plain {
			delete(d.Elems, ek)
		}
	}
}

// pairDrift takes the hairpin pairs out of have, read from the kernel, and describes how they
// differ from the pairs counted ("" when they do not): the ledger it is compared with next holds
// no pairs.
func (s *Syncer) pairDrift(have *Digest) string {
	var extra, seen int
	for ek := range have.Elems {
		if !mapDefs[ek.Map].Plain {
			continue
		}
		if s.pairs[pairKeyOf(ek.Key.Addr)] > 0 {
			seen++
		} else {
			extra++
		}
		delete(have.Elems, ek)
	}
	var out []string
	if missing := len(s.pairs) - seen; missing > 0 {
		out = append(out, fmt.Sprintf("%d hairpin pairs missing", missing))
	}
	if extra > 0 {
		out = append(out, fmt.Sprintf("%d hairpin pairs extra", extra))
	}
	return strings.Join(out, ", ")
}
