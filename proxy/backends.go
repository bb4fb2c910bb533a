package proxy

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"slices"
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
	for ek, v := range takeBackendElems(d) {
		sum += backendHash(ek.Key, v)
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

// backendElem is one backend element on its way to the kernel in a full
// sync: a third of the size of an Element, and no map entry per element;
// each becomes an Element only in the batch that sends it.
type backendElem struct {
	key MapKey // with the index; the address's family names the map
	to  netip.AddrPort
}

// takeBackendElems removes the backend elements from have, read from the
// kernel, and returns them.
func takeBackendElems(have *Digest) map[elemKey]string {
	out := map[elemKey]string{}
	for ek, v := range have.Elems {
		if isBackendMap(ek.Map) {
			out[ek] = v
			delete(have.Elems, ek)
		}
	}
	return out
}

// backendPlan compares the backends a table should hold, the won lists,
// with those it holds (have, from takeBackendElems): what to add, what to
// delete (a changed value is both), and the sum of the table's elements once
// done.
func backendPlan(won []PortBackends, have map[elemKey]string) (add, del []backendElem, sum uint64) {
	for _, pb := range won {
		name := mapBackends(familyOf(pb.Key.Addr))
		for i, to := range pb.To {
			k := pb.Key
			k.Index = uint32(i)
			ek := elemKey{name, k}
			v := to.String()
			sum += backendHash(k, v)
			if old, ok := have[ek]; ok {
				delete(have, ek)
				if old == v {
					continue
				}
				del = append(del, backendElem{key: k})
			}
			add = append(add, backendElem{key: k, to: to})
		}
	}
	for ek := range have {
		del = append(del, backendElem{key: ek.Key})
	}
	byKey := func(a, b backendElem) int { return compareKeys(a.key, b.key) }
	slices.SortFunc(add, byKey)
	slices.SortFunc(del, byKey)
	return add, del, sum
}

// backendKeys and backendAdds turn a batch's backend elements into the
// general ones, only as they are queued.
func backendKeys(list []backendElem) []elemKey {
	out := make([]elemKey, len(list))
	for i, b := range list {
		out[i] = elemKey{mapBackends(familyOf(b.key.Addr)), b.key}
	}
	return out
}

func backendAdds(list []backendElem) []Element {
	out := make([]Element, len(list))
	for i, b := range list {
		out[i] = Element{Map: mapBackends(familyOf(b.key.Addr)), MapElement: MapElement{Key: b.key, To: b.to}}
	}
	return out
}
