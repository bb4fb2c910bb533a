package proxy

import (
	"maps"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestKeySetChanges(t *testing.T) {
	k := MapKey{Addr: a("10.96.0.1"), Proto: TCP, Port: 80}
	np := MapKey{Proto: TCP, Port: 30080}
	el := func(m string, key MapKey) elemKey { return elemKey{m, key} }
	svcIPs, noEP, clusterIPs := mapServiceIPs(IPv4), mapNoEPServices(IPv4), setClusterIPs(IPv4)
	keys := el(setServiceKeys(IPv4), k)
	tests := []struct {
		name            string
		ledger, out, in []elemKey
		wantOut, wantIn []elemKey
	}{
		{name: "new key", in: []elemKey{el(svcIPs, k)}, wantIn: []elemKey{keys}},
		{name: "new NodePort", in: []elemKey{el(mapServiceNodePorts(IPv4), np)}, wantIn: []elemKey{el(setNodePortKeys(IPv4), np)}},
		{name: "element replaced", ledger: []elemKey{el(svcIPs, k)}, out: []elemKey{el(svcIPs, k)}, in: []elemKey{el(svcIPs, k)}},
		{name: "only holder removed", ledger: []elemKey{el(svcIPs, k)}, out: []elemKey{el(svcIPs, k)}, wantOut: []elemKey{keys}},
		{name: "one of two holders removed", ledger: []elemKey{el(svcIPs, k), el(clusterIPs, k)}, out: []elemKey{el(clusterIPs, k)}},
		{name: "moved to the no-endpoint map", ledger: []elemKey{el(svcIPs, k)}, out: []elemKey{el(svcIPs, k)}, in: []elemKey{el(noEP, k)}},
		{name: "other families and sets untouched", in: []elemKey{el(setHairpin(IPv4), MapKey{Addr: a("10.244.0.1")})}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ledger, h := newDigest(), newDigest()
			w := &desired{elems: map[elemKey]MapElement{}}
			for _, ek := range tc.ledger {
				ledger.Elems[ek] = ""
			}
			for _, ek := range tc.out {
				h.Elems[ek] = ""
			}
			for _, ek := range tc.in {
				w.elems[ek] = MapElement{Key: ek.Key}
			}
			keySetChanges(&ledger, &h, w)
			gotOut := slices.DeleteFunc(slices.Collect(maps.Keys(h.Elems)), func(ek elemKey) bool { return !isKeySet(ek.Map) })
			gotIn := slices.DeleteFunc(slices.Collect(maps.Keys(w.elems)), func(ek elemKey) bool { return !isKeySet(ek.Map) })
			if diff := cmp.Diff(tc.wantOut, gotOut, cmpopts.EquateEmpty(), cmp.Comparer(func(x, y elemKey) bool { return x == y })); diff != "" {
				t.Errorf("key-set elements removed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantIn, gotIn, cmpopts.EquateEmpty(), cmp.Comparer(func(x, y elemKey) bool { return x == y })); diff != "" {
				t.Errorf("key-set elements added (-want +got):\n%s", diff)
			}
		})
	}
}
