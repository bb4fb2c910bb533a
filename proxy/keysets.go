package proxy

import (
	"fmt"
	"strings"
)

// Every new connection of the node meets the nat hooks of every shard table
// (layout.go). A shard's dispatch used to look the destination up in its
// firewall, no-endpoint, NodePort and Service maps in turn, with a fib lookup
// among them: about 1 µs per shard, some 16 µs for each new connection to no
// Service at all, measured with datagrams to fresh ports through a node
// namespace. Each table therefore also keeps the keys of the elements written
// into it, in two plain sets, and its dispatch returns at once for a packet
// whose destination key is in neither. The sets are derived from the maps:
// no fragment holds them, assemble lists them for a model, and the Syncer's
// partial syncs keep them per table as they write the maps' elements.

// setServiceKeys holds the address . protocol . port keys of the table's
// Service-address maps, and setNodePortKeys the protocol . port keys of its
// NodePort maps.
func setServiceKeys(f Family) string  { return perFamily(f, "service-keys-v4", "service-keys-v6") }
func setNodePortKeys(f Family) string { return perFamily(f, "nodeport-keys-v4", "nodeport-keys-v6") }

// keySetOf names the key set an element of map m is listed in ("" for none).
var keySetOf = func() map[string]string {
	out := map[string]string{}
	for _, f := range families {
		for _, m := range []string{mapServiceIPs(f), mapNoEPServices(f), mapFirewallIPs(f), setClusterIPs(f)} {
			out[m] = setServiceKeys(f)
		}
		for _, m := range []string{mapServiceNodePorts(f), mapNoEPNodePorts(f)} {
			out[m] = setNodePortKeys(f)
		}
	}
	return out
}()

// keySetSources lists, per key set, the maps whose keys it holds.
var keySetSources = func() map[string][]string {
	out := map[string][]string{}
	for m, ks := range keySetOf {
		out[ks] = append(out[ks], m)
	}
	return out
}()

// isKeySet says whether a set is a derived key set. The ledger leaves their
// elements out, as it does hairpin pairs: at 10,000 Services they were
// another 10,000 entries, and every one follows from an element it holds.
func isKeySet(name string) bool {
	_, ok := keySetSources[name]
	return ok
}

// keySetChanges adds to a partial sync of one table the key-set elements that
// its map changes call for. ledger is the table as written before; h and w
// are what the sync takes out of and puts into it (h.Elems lists every
// element to be replaced or removed, w.elems every one to be written).
func keySetChanges(ledger *Digest, h *Digest, w *desired) {
	keys := map[elemKey]bool{}
	note := func(ek elemKey) {
		if ks := keySetOf[ek.Map]; ks != "" {
			keys[elemKey{ks, ek.Key}] = true
		}
	}
	for ek := range h.Elems {
		note(ek)
	}
	for ek := range w.elems {
		note(ek)
	}
	for kk := range keys {
		before, after := false, false
		for _, m := range keySetSources[kk.Map] {
			ek := elemKey{m, kk.Key}
			_, written := w.elems[ek]
			_, removed := h.Elems[ek]
			_, held := ledger.Elems[ek]
			before = before || held
			after = after || written || held && !removed
		}
		switch {
		case before && !after:
			h.Elems[kk] = ""
		case after && !before:
			w.elems[kk] = MapElement{Key: kk.Key}
		}
	}
}

// keySetDrift takes the key-set elements out of have, read from the kernel,
// and describes how they differ from the keys of its maps' elements ("" when
// they do not).
func keySetDrift(have *Digest) string {
	want := map[elemKey]bool{}
	var extra int
	for ek := range have.Elems {
		if ks := keySetOf[ek.Map]; ks != "" {
			want[elemKey{ks, ek.Key}] = true
		}
	}
	for ek := range have.Elems {
		if !isKeySet(ek.Map) {
			continue
		}
		delete(have.Elems, ek)
		if !want[ek] {
			extra++
		}
		delete(want, ek)
	}
	var out []string
	if len(want) > 0 {
		out = append(out, fmt.Sprintf("%d key-set elements missing", len(want)))
	}
	if extra > 0 {
		out = append(out, fmt.Sprintf("%d key-set elements extra", extra))
	}
	return strings.Join(out, ", ")
}
