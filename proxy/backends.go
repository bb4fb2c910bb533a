package proxy

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
)

// The backend maps hold one element per endpoint of every chainless port:
// 100,000 at 10,000 Services. The Syncer keeps none of them, neither in the
// ledger nor among the claims. A port's backends belong to the Service whose
// element holds its Service-map key, and a partial sync rebuilds the old and
// new lists from the Services' inputs. What the ledger keeps per table is the
// sum of the elements' hashes, which the drift check compares with the sum
// of what it reads back.

var backendSeed = maphash.MakeSeed()

// backendHash is one backend element's share of its table's sum; value is
// the element's value as the digest renders it.
func backendHash(k MapKey, value string) uint64 {
	var h maphash.Hash
	h.SetSeed(backendSeed)
	a := k.Addr.As16()
	h.Write(a[:])
	h.WriteString(string(k.Proto))
	var b [6]byte
	binary.BigEndian.PutUint16(b[:2], k.Port)
	binary.BigEndian.PutUint32(b[2:], k.Index)
	h.Write(b[:])
	h.WriteString(value)
	return h.Sum64()
}

// takeBackends removes the backend elements from d and returns their sum.
func takeBackends(d *Digest) uint64 {
	var sum uint64
	for ek, v := range d.Elems {
		if isBackendMap(ek.Map) {
			sum += backendHash(ek.Key, v)
			delete(d.Elems, ek)
		}
	}
	return sum
}

// backendsOf returns the backends fr lists for Service-map key k.
func backendsOf(fr Fragment, k MapKey) []netip.AddrPort {
	for _, pb := range fr.Backends {
		if pb.Key == k {
			return pb.To
		}
	}
	return nil
}

// backendChanges adds to a partial sync the backend elements of one port
// whose Service-map key moved from the old list in table oldT to the new one
// in table newT ("" where there is none), element by element where the
// table stays. scope gives a table's sides of the sync.
func backendChanges(k MapKey, old []netip.AddrPort, oldT string, nu []netip.AddrPort, newT string, scope func(string) (*Digest, *desired)) {
	name := mapBackends(familyOf(k.Addr))
	for i := range max(len(old), len(nu)) {
		ek := elemKey{name, k}
		ek.Key.Index = uint32(i)
		inOld, inNew := i < len(old), i < len(nu)
		if inOld && inNew && oldT == newT && old[i] == nu[i] {
			continue
		}
		if inOld && oldT != "" {
			h, _ := scope(oldT)
			h.Elems[ek] = old[i].String()
		}
		if inNew && newT != "" {
			_, w := scope(newT)
			w.elems[ek] = MapElement{Key: ek.Key, To: nu[i]}
		}
	}
}
