package proxy

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestPairCounts: both families are counted, a pair is forgotten when its last fragment goes,
// and the keys come back as they went in.
func TestPairCounts(t *testing.T) {
	c := newPairCounts()
	v4, v6 := pairKeyOf(a("10.244.1.5")), pairKeyOf(a("fd00:244::5"))
	c.add(v4, 1)
	c.add(v4, 1)
	c.add(v6, 1)
	if c.count(v4) != 2 || c.count(v6) != 1 || c.len() != 2 {
		t.Fatalf("counts %d, %d, len %d; want 2, 1, 2", c.count(v4), c.count(v6), c.len())
	}
	keys := slices.SortedFunc(c.keys(), comparePairs)
	if diff := cmp.Diff([]pairKey{v4, v6}, keys); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	if got := v4.elemKey(); got.Map != setHairpin(IPv4) || got.Key.Addr != netip.MustParseAddr("10.244.1.5") {
		t.Errorf("element of %v: %+v", v4, got)
	}
	c.add(v4, -1)
	c.add(v6, -1)
	if c.count(v4) != 1 || c.count(v6) != 0 || c.len() != 1 {
		t.Errorf("after removals: counts %d, %d, len %d; want 1, 0, 1", c.count(v4), c.count(v6), c.len())
	}
}
