package proxy

import (
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"go.uber.org/zap/zaptest"
)

// manyServices returns n ClusterIP Services with a NodePort and two
// endpoints each, numbered from first.
func manyServices(first, n int) map[ServiceKey]InputSource {
	out := map[ServiceKey]InputSource{}
	for i := first; i < first+n; i++ {
		svc := Service{Namespace: "bench", Name: fmt.Sprintf("svc-%05d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:      httpPort(int32(30000 + i%2700))}
		out[svc.Key()] = &ServiceInput{Service: svc, Endpoints: []Endpoint{
			ep(fmt.Sprintf("10.244.%d.%d", i>>8, i&0xff), nodeA, http8080()),
			ep(fmt.Sprintf("10.245.%d.%d", i>>8, i&0xff), nodeB, http8080()),
		}}
	}
	return out
}

func syncerFacts() Facts {
	return Facts{Node: Node{Name: nodeA}, ClusterCIDRs: []netip.Prefix{pf("10.244.0.0/15")}}
}

func newTestSyncer(t *testing.T, node ns.NetNS) *Syncer {
	return NewSyncer(NewApplier(int(node.Fd())), syncerFacts(), zaptest.NewLogger(t))
}

func mustSync(t *testing.T, s *Syncer, changed map[ServiceKey]InputSource) SyncResult {
	t.Helper()
	res, err := s.Sync(changed)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return res
}

// checkLedger asserts that the kernel holds what the ledger says, table by
// table, and that the tables together hold what a full Build of the
// Syncer's inputs describes as one logical table.
func checkLedger(t *testing.T, s *Syncer) {
	t.Helper()
	logical := newDigest()
	for _, table := range s.tables() {
		have, err := s.app.readKernel(table)
		if err != nil {
			t.Fatal(err)
		}
		// A key missing would let the dispatch skip a Service; a stale one
		// only costs time, but either means the partial syncs lost track.
		if sum := keySetDrift(&have); sum != "" {
			t.Errorf("table %s: its key sets differ from its maps' keys: %s", table, sum)
		}
		maps.Copy(logical.Chains, have.Chains)
		maps.Copy(logical.Sets, have.Sets)
		maps.Copy(logical.Maps, have.Maps)
		maps.Copy(logical.Elems, have.Elems)
		if sum := s.pairDrift(&have); table == TableName && sum != "" {
			t.Errorf("table %s differs from the pair counts: %s", table, sum)
		}
		if sum := takeBackends(&have); sum != s.backendSums[table] {
			t.Errorf("table %s: its backend elements differ from the ledger's sum", table)
		}
		if sum := diffSummary(have, *s.ledger[table]); sum != "" {
			t.Errorf("table %s differs from the ledger: %s", table, sum)
		}
	}
	st := State{Node: s.facts.Node, ClusterCIDRs: s.facts.ClusterCIDRs, Endpoints: map[ServiceKey][]Endpoint{}}
	for k, src := range s.inputs {
		if s.rejected[k] == nil {
			in := src.Input()
			st.Services = append(st.Services, in.Service)
			st.Endpoints[k] = in.Endpoints
		}
	}
	want := digestOf(Build(st))
	maps.DeleteFunc(want.Elems, func(ek elemKey, _ string) bool { return isKeySet(ek.Map) })
	if sum := diffSummary(logical, want); sum != "" {
		t.Errorf("the tables together differ from a full build: %s", sum)
	}
}

func TestSyncerTransactionSize(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	res := mustSync(t, s, manyServices(0, 1000))
	if !res.Full || res.Services != 1000 {
		t.Fatalf("first sync %+v, want a full one of 1000 Services", res)
	}
	t.Logf("cold start, 1000 Services: %d objects in %d batches", res.Ops, res.Batches)

	if res := mustSync(t, s, nil); res.Ops != 0 || res.Batches != 0 {
		t.Errorf("no change sent %+v", res)
	}
	// The same inputs again: rebuilt, nothing sent.
	if res := mustSync(t, s, manyServices(0, 1000)); res.Ops != 0 || res.Batches != 0 || res.Full {
		t.Errorf("unchanged inputs sent %+v", res)
	}

	// One new Service: its 2 chains (service, external), their 3 rules,
	// 3 map elements (ClusterIP, NodePort, the ClusterIP key to masquerade
	// from off-cluster sources), 2 key-set elements (its ClusterIP and
	// NodePort keys in its shard), 1 hairpin pair (its endpoint on this
	// node; the other node's pod cannot hairpin here).
	res = mustSync(t, s, manyServices(1000, 1))
	if res.Full || res.Batches != 1 || res.Ops != 11 {
		t.Errorf("adding one Service to 1000: %+v, want 11 objects in one partial batch", res)
	}
	// One endpoint gone: the service chain rewritten (flush + its rule).
	k := ServiceKey{"bench", "svc-00007"}
	in, _ := s.Input(k)
	in.Endpoints = in.Endpoints[:1]
	if res := mustSync(t, s, map[ServiceKey]InputSource{k: &in}); res.Ops != 2 || res.Batches != 1 {
		t.Errorf("removing one endpoint: %+v, want 2 objects in one batch", res)
	}
	// A Service deleted: 3 map elements, 2 key-set elements and 1 hairpin
	// pair deleted, 2 chains flushed and deleted.
	if res := mustSync(t, s, map[ServiceKey]InputSource{{"bench", "svc-00008"}: nil}); res.Ops != 10 {
		t.Errorf("deleting one Service: %+v, want 10 objects", res)
	}
	checkLedger(t, s)

	// A restarted daemon with the same inputs finds the kernel as it wants
	// it and sends nothing.
	again := newTestSyncer(t, node)
	all := manyServices(0, 1001)
	all[k] = &in
	delete(all, ServiceKey{"bench", "svc-00008"})
	if res := mustSync(t, again, all); !res.Full || res.Ops != 0 {
		t.Errorf("restart with unchanged inputs: %+v, want a full sync sending nothing", res)
	}
}

func TestSyncerSplitsColdStart(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	s.app.batchOps = 100
	res := mustSync(t, s, manyServices(0, 60))
	if res.Batches < 5 {
		t.Errorf("cold start of %d objects went in %d batches of at most 100", res.Ops, res.Batches)
	}
	checkLedger(t, s)
	// Changes after the cold start still go in one batch.
	if res := mustSync(t, s, manyServices(60, 1)); res.Batches != 1 {
		t.Errorf("one new Service went in %d batches", res.Batches)
	}
	checkLedger(t, s)
	// A large partial sync is split too: every Service loses its endpoints
	// (its keys move to the no-endpoint maps), then gets them back.
	empty := manyServices(0, 61)
	for _, src := range empty {
		src.(*ServiceInput).Endpoints = nil
	}
	if res := mustSync(t, s, empty); res.Full || res.Batches < 2 {
		t.Errorf("61 Services losing their endpoints: %+v, want a partial sync in several batches", res)
	}
	checkLedger(t, s)
	mustSync(t, s, manyServices(0, 61))
	checkLedger(t, s)
}

func TestSyncerRepairsDrift(t *testing.T) {
	requireRoot(t)
	requireNft(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	mustSync(t, s, manyServices(0, 3))
	if _, drift, err := s.CheckDrift(true); err != nil || drift {
		t.Fatalf("CheckDrift right after a sync: drift %v, err %v", drift, err)
	}
	first := ServiceKey{"bench", "svc-00001"}
	shard := shardTable(shardOf(first))
	for name, cmd := range map[string]string{
		"flushed chain":        "flush chain inet " + shard + " services",
		"deleted element":      "delete element inet " + shard + " service-ips-v4 { 10.96.0.1 . tcp . 80 }",
		"foreign rule":         "add rule inet " + shard + " reject-chain accept",
		"deleted main table":   "delete table inet nodenet",
		"deleted shard":        "delete table inet " + shard,
		"extra element":        "add element inet " + shard + " service-ips-v4 { 10.96.9.9 . tcp . 80 : drop }",
		"stale shard table":    "add table inet nodenet-svc-99",
		"deleted pair":         "delete element inet nodenet hairpin-v4 { 10.244.0.1 . 10.244.0.1 }",
		"extra pair":           "add element inet nodenet hairpin-v4 { 10.99.0.1 . 10.99.0.1 }",
		"deleted cluster key":  "delete element inet " + shard + " cluster-ips-v4 { 10.96.0.1 . tcp . 80 }",
		"extra cluster key":    "add element inet " + shard + " cluster-ips-v4 { 10.96.9.9 . tcp . 80 }",
		"deleted service key":  "delete element inet " + shard + " service-keys-v4 { 10.96.0.1 . tcp . 80 }",
		"extra service key":    "add element inet " + shard + " service-keys-v4 { 10.96.9.9 . tcp . 80 }",
		"deleted nodeport key": "delete element inet " + shard + " nodeport-keys-v4 { tcp . 30001 }",
		"extra nodeport key":   "add element inet " + shard + " nodeport-keys-v4 { tcp . 32000 }",
		"flushed key set":      "flush set inet " + shard + " service-keys-v4",
	} {
		t.Run(name, func(t *testing.T) { checkRepairs(t, s, node, cmd) })
	}
}

// checkRepairs runs an nft command behind the Syncer's back and asserts
// that the drift check finds it and sends a repair that leaves no drift.
func checkRepairs(t *testing.T, s *Syncer, node ns.NetNS, cmd string) {
	t.Helper()
	nft(t, node, cmd)
	res, drift, err := s.CheckDrift(false)
	if err != nil || !drift {
		t.Fatalf("CheckDrift after %q: drift %v, err %v", cmd, drift, err)
	}
	if res.Ops == 0 {
		t.Errorf("repair sent nothing")
	}
	checkLedger(t, s)
	if _, drift, _ := s.CheckDrift(true); drift {
		t.Errorf("still drifting after the repair")
	}
}

func nft(t *testing.T, n ns.NetNS, cmd string) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		out, err := exec.Command("nft", cmd).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft %s: %v: %s", cmd, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Two Services may share an external IP and port: the first in
// namespace/name order gets the map key; when it goes, the other takes it.
func TestSyncerSharedKey(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	shared := a("192.0.2.10")
	mk := func(name, cip, backend string) *ServiceInput {
		return &ServiceInput{
			Service:   Service{Namespace: "ns", Name: name, ClusterIPs: []netip.Addr{a(cip)}, ExternalIPs: []netip.Addr{shared}, Ports: httpPort(0)},
			Endpoints: []Endpoint{ep(backend, nodeA, http8080())},
		}
	}
	mustSync(t, s, map[ServiceKey]InputSource{
		{"ns", "b"}: mk("b", "10.96.0.2", "10.244.0.2"),
		{"ns", "a"}: mk("a", "10.96.0.1", "10.244.0.1"),
	})
	owner := func() string {
		ek := elemKey{mapServiceIPs(IPv4), MapKey{Addr: shared, Proto: TCP, Port: 80}}
		return s.ledger[elemTable(ek, s.claims[ek][0])].Elems[ek]
	}
	if got := owner(); !strings.Contains(got, "ns/a/") {
		t.Errorf("shared key goes to %q, want ns/a", got)
	}
	checkLedger(t, s)
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "a"}: nil})
	if got := owner(); !strings.Contains(got, "ns/b/") {
		t.Errorf("after deleting ns/a the shared key goes to %q, want ns/b", got)
	}
	checkLedger(t, s)
	// Back again; then the loser's key moves to the no-endpoint map in its
	// own shard while the winner keeps the Service map's.
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "a"}: mk("a", "10.96.0.1", "10.244.0.1")})
	if got := owner(); !strings.Contains(got, "ns/a/") {
		t.Errorf("after adding ns/a again the shared key goes to %q, want ns/a", got)
	}
	checkLedger(t, s)
	b := mk("b", "10.96.0.2", "10.244.0.2")
	b.Endpoints = nil
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "b"}: b})
	checkLedger(t, s)
	// One Service's ClusterIP is another's external IP: the two maps'
	// winners live in different shards.
	c := mk("c", "10.96.0.3", "10.244.0.3")
	c.Service.ExternalIPs = []netip.Addr{a("10.96.0.1")}
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "c"}: c})
	checkLedger(t, s)
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "a"}: nil, {"ns", "c"}: nil})
	checkLedger(t, s)
}

// A Service whose rules cannot be written is left out alone.
func TestSyncerRejectsBrokenServiceAlone(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	changes := manyServices(0, 3)
	bad := &ServiceInput{Service: Service{Namespace: "ns", Name: "bad", ClusterIPs: []netip.Addr{a("10.96.1.1")},
		Ports: []ServicePort{{Name: "x", Protocol: "dccp", Port: 9}}},
		Endpoints: []Endpoint{ep("10.244.9.9", nodeA, map[string]int32{"x": 9})}}
	changes[ServiceKey{"ns", "bad"}] = bad
	mustSync(t, s, changes)
	if err := s.Rejected()[ServiceKey{"ns", "bad"}]; err == nil || !strings.Contains(err.Error(), `unknown protocol "dccp"`) {
		t.Errorf("rejected: %v, want ns/bad for its protocol", s.Rejected())
	}
	if n := s.pairs.len(); n != 3 {
		t.Errorf("%d hairpin pairs written, want the 3 good Services' 3 on this node", n)
	}
	written := map[elemKey]string{}
	for _, d := range s.ledger {
		maps.Copy(written, d.Elems)
	}
	if len(written) != 9 {
		t.Errorf("%d map elements written, want the 3 good Services' 9 (ClusterIP, NodePort, masquerade key)", len(written))
	}
	for ek := range written {
		if ek.Key.Addr == a("10.96.1.1") {
			t.Errorf("element %v of the rejected Service written", ek)
		}
	}
	// Later changes to others are partial again; fixing the bad one takes it in.
	mustSync(t, s, manyServices(3, 1))
	bad.Service.Ports[0].Protocol = UDP
	if res := mustSync(t, s, map[ServiceKey]InputSource{{"ns", "bad"}: bad}); res.Full || len(s.Rejected()) != 0 {
		t.Errorf("fixed Service: %+v, rejected %v", res, s.Rejected())
	}
	checkLedger(t, s)
}

func TestSyncerFactsChangeRebuildsAll(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	mustSync(t, s, manyServices(0, 5))
	f := syncerFacts()
	f.Node.Addresses = []netip.Addr{nodeIP}
	s.SetFacts(f)
	res := mustSync(t, s, nil)
	if !res.Full || res.Ops == 0 {
		t.Errorf("facts change: %+v, want a full sync that sends the new NodePort rules", res)
	}
	checkLedger(t, s)
	s.SetFacts(f)
	if res := mustSync(t, s, nil); res.Ops != 0 {
		t.Errorf("same facts again sent %+v", res)
	}
}

// ClusterIP-only Services share their shard's pick chain for their number of
// endpoints: it stays while one of them goes to it and leaves with the last.
func TestSyncerSharesPickChains(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	mk := func(name string, n int) *ServiceInput {
		in := &ServiceInput{Service: Service{Namespace: "ns", Name: name, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 1, byte(len(name))})}, Ports: httpPort(0)}}
		for i := range n {
			in.Endpoints = append(in.Endpoints, ep(fmt.Sprintf("10.244.%d.%d", len(name), i+1), nodeA, http8080()))
		}
		return in
	}
	// Two names in one shard, and the shard's table.
	var a, b string
	for i := 0; b == ""; i++ {
		name := fmt.Sprintf("s%d", i)
		switch {
		case a == "":
			a = name
		case shardOf(ServiceKey{"ns", name}) == shardOf(ServiceKey{"ns", a}) && len(name) != len(a):
			b = name
		}
	}
	table := shardTable(shardOf(ServiceKey{"ns", a}))
	chains := func() []string {
		have, err := s.app.readKernel(table)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for c := range have.Chains {
			if isPickChain(c) {
				out = append(out, c)
			}
		}
		slices.Sort(out)
		return out
	}
	step := func(what string, changed map[ServiceKey]InputSource, want ...string) {
		t.Helper()
		mustSync(t, s, changed)
		checkLedger(t, s)
		if got := chains(); !slices.Equal(got, want) {
			t.Errorf("%s: pick chains %v, want %v", what, got, want)
		}
	}
	step("two Services of two endpoints", map[ServiceKey]InputSource{{"ns", a}: mk(a, 2), {"ns", b}: mk(b, 2)}, "pick-2-v4")
	step("one gone", map[ServiceKey]InputSource{{"ns", a}: nil}, "pick-2-v4")
	step("the other grows", map[ServiceKey]InputSource{{"ns", b}: mk(b, 3)}, "pick-3-v4")
	step("back, beside it", map[ServiceKey]InputSource{{"ns", a}: mk(a, 2)}, "pick-2-v4", "pick-3-v4")
	step("no endpoints", map[ServiceKey]InputSource{{"ns", a}: mk(a, 0)}, "pick-3-v4")
	step("the last gone", map[ServiceKey]InputSource{{"ns", a}: nil, {"ns", b}: nil})

	// A restarted daemon finds what it would write.
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", a}: mk(a, 2), {"ns", b}: mk(b, 3)})
	again := newTestSyncer(t, node)
	if res := mustSync(t, again, map[ServiceKey]InputSource{{"ns", a}: mk(a, 2), {"ns", b}: mk(b, 3)}); !res.Full || res.Ops != 0 {
		t.Errorf("restart with unchanged inputs: %+v, want a full sync sending nothing", res)
	}
}

// Chainless Service ports (ClusterIP only, no affinity) change by map
// elements alone: O(1) objects per change, whatever the world's size.
func TestSyncerChainlessTransactionSize(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	world := benchWorld(1001)
	last := ServiceKey{"bench", "svc-01000"}
	one := world[last]
	delete(world, last)
	if res := mustSync(t, s, world); !res.Full {
		t.Fatalf("first sync %+v, want a full one", res)
	}
	// One new Service: its ClusterIP element, masquerade key and key-set
	// element, its 10 backends and their 10 hairpin pairs (the benchmark's
	// endpoints are outside the pod ranges); the pick chain is there.
	if res := mustSync(t, s, map[ServiceKey]InputSource{last: one}); res.Full || res.Batches != 1 || res.Ops != 23 {
		t.Errorf("adding one Service to 1000: %+v, want 23 objects in one partial batch", res)
	}
	checkLedger(t, s)
	// One endpoint replaced: its backend element and hairpin pair rewritten
	// (each deleted and added).
	replaced := one.Input()
	replaced.Endpoints = slices.Clone(replaced.Endpoints)
	replaced.Endpoints[9].Addr = a("10.250.0.1")
	if res := mustSync(t, s, map[ServiceKey]InputSource{last: &replaced}); res.Ops != 4 || res.Batches != 1 {
		t.Errorf("replacing one endpoint: %+v, want 4 objects in one batch", res)
	}
	checkLedger(t, s)
	// One endpoint gone: its backend element and pair go, the Service's
	// element moves to the 9-backend pick chain, which is new (a chain and
	// its two rules).
	fewer := replaced
	fewer.Endpoints = replaced.Endpoints[:9]
	if res := mustSync(t, s, map[ServiceKey]InputSource{last: &fewer}); res.Ops != 7 || res.Batches != 1 {
		t.Errorf("removing one endpoint: %+v, want 7 objects in one batch", res)
	}
	checkLedger(t, s)
	if res := mustSync(t, s, map[ServiceKey]InputSource{last: &fewer}); res.Ops != 0 {
		t.Errorf("unchanged input sent %+v", res)
	}
}

// The backend maps are in no ledger entry, only in a sum per table: the drift
// check still finds a backend lost, changed, added or unreadable.
func TestSyncerRepairsBackendDrift(t *testing.T) {
	requireRoot(t)
	requireNft(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	mustSync(t, s, benchWorld(3))
	shard := shardTable(shardOf(ServiceKey{"bench", "svc-00001"}))
	for name, cmd := range map[string]string{
		"deleted backend": "delete element inet " + shard + " backends-v4 { 10.100.0.1 . tcp . 80 . 0x00000000 }",
		"changed backend": "delete element inet " + shard + " backends-v4 { 10.100.0.1 . tcp . 80 . 0x00000003 }; " +
			"add element inet " + shard + " backends-v4 { 10.100.0.1 . tcp . 80 . 0x00000003 : 10.99.0.1 . 80 }",
		"extra backend": "add element inet " + shard + " backends-v4 { 10.100.0.1 . tcp . 80 . 0x00000063 : 10.99.0.1 . 80 }",
		// An element the proxy cannot read gets the map re-created: every
		// backend must be written again, not only those read after it.
		"foreign element": "add element inet " + shard + " backends-v4 { 10.100.0.1 . icmp . 0 . 0x00000000 : 10.99.0.1 . 80 }",
	} {
		t.Run(name, func(t *testing.T) { checkRepairs(t, s, node, cmd) })
	}
}

// A chainless port's backends follow its Service-map key: written when its
// Service wins the key from another that shares it, removed when it loses it.
func TestSyncerBackendsFollowTheKey(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	shared := a("10.96.5.5")
	plain := &ServiceInput{
		Service:   Service{Namespace: "ns", Name: "b-plain", ClusterIPs: []netip.Addr{shared}, Ports: httpPort(0)},
		Endpoints: []Endpoint{ep("10.244.5.1", nodeA, http8080()), ep("10.244.5.2", nodeA, http8080())},
	}
	external := &ServiceInput{
		Service:   Service{Namespace: "ns", Name: "a-external", ClusterIPs: []netip.Addr{a("10.96.5.6")}, ExternalIPs: []netip.Addr{shared}, Ports: httpPort(0)},
		Endpoints: []Endpoint{ep("10.244.5.3", nodeA, http8080())},
	}
	holder := func() string {
		ek := elemKey{mapServiceIPs(IPv4), MapKey{Addr: shared, Proto: TCP, Port: 80}}
		return s.ledger[elemTable(ek, s.claims[ek][0])].Elems[ek]
	}
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "b-plain"}: plain, {"ns", "a-external"}: external})
	if got := holder(); !strings.Contains(got, "external-") {
		t.Errorf("the shared key goes to %q, want ns/a-external's chain", got)
	}
	checkLedger(t, s)
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "a-external"}: nil})
	if got := holder(); got != "goto pick-2-v4" {
		t.Errorf("after ns/a-external left the shared key goes to %q, want the 2-backend pick chain", got)
	}
	checkLedger(t, s)
	mustSync(t, s, map[ServiceKey]InputSource{{"ns", "a-external"}: external})
	checkLedger(t, s)
}

// A port that gains a NodePort gets a chain of its own and leaves the backend
// map; losing it again, it goes back.
func TestSyncerChainlessAndBack(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	k := ServiceKey{"ns", "toggle"}
	mk := func(nodePort int32) *ServiceInput {
		return &ServiceInput{
			Service:   Service{Namespace: "ns", Name: "toggle", ClusterIPs: []netip.Addr{a("10.96.7.7")}, Ports: httpPort(nodePort)},
			Endpoints: []Endpoint{ep("10.244.7.1", nodeA, http8080()), ep("10.244.7.2", nodeB, http8080())},
		}
	}
	for i, nodePort := range []int32{0, 30007, 0, 30007} {
		mustSync(t, s, map[ServiceKey]InputSource{k: mk(nodePort)})
		checkLedger(t, s)
		have, err := s.app.readKernel(shardTable(shardOf(k)))
		if err != nil {
			t.Fatal(err)
		}
		backends := 0
		for ek := range have.Elems {
			if isBackendMap(ek.Map) {
				backends++
			}
		}
		if want := map[bool]int{true: 2, false: 0}[nodePort == 0]; backends != want {
			t.Errorf("step %d (NodePort %d): %d backend elements, want %d", i, nodePort, backends, want)
		}
	}
}

// A restart after every endpoint moved rewrites backends in place: in a full
// sync split over batches each rewritten element goes with its deletion, as
// the kernel refuses a held key with another value.
func TestSyncerSplitFullRewritesBackends(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	s.app.batchOps = 100
	mustSync(t, s, benchWorld(60))
	moved := map[ServiceKey]InputSource{}
	for k, src := range benchWorld(60) {
		in := src.Input()
		in.Endpoints = slices.Clone(in.Endpoints)
		for i := range in.Endpoints {
			in.Endpoints[i].Addr = netip.AddrFrom4([4]byte{10, 250, byte(len(moved)), byte(i)})
		}
		moved[k] = &in
	}
	again := newTestSyncer(t, node)
	again.app.batchOps = 20
	if res := mustSync(t, again, moved); !res.Full || res.Batches < 2 {
		t.Errorf("restart with every endpoint moved: %+v, want a full sync in several batches", res)
	}
	checkLedger(t, again)
}

// internalTrafficPolicy: Local with the node's endpoint coming and going: the
// ClusterIP moves between the pick chain (local backends only) and a drop in
// the no-endpoint map, and the backends follow.
func TestSyncerChainlessLocalPolicy(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	s := newTestSyncer(t, node)
	k := ServiceKey{"ns", "itp"}
	mk := func(local bool) *ServiceInput {
		in := &ServiceInput{
			Service:   Service{Namespace: "ns", Name: "itp", ClusterIPs: []netip.Addr{a("10.96.8.8")}, Ports: httpPort(0), InternalLocal: true},
			Endpoints: []Endpoint{ep("10.245.8.1", nodeB, http8080())},
		}
		if local {
			in.Endpoints = append(in.Endpoints, ep("10.244.8.1", nodeA, http8080()))
		}
		return in
	}
	key := MapKey{Addr: a("10.96.8.8"), Proto: TCP, Port: 80}
	table := shardTable(shardOf(k))
	for i, local := range []bool{true, false, true, false} {
		mustSync(t, s, map[ServiceKey]InputSource{k: mk(local)})
		checkLedger(t, s)
		want := map[bool]string{true: "goto pick-1-v4", false: "drop"}[local]
		m := map[bool]string{true: mapServiceIPs(IPv4), false: mapNoEPServices(IPv4)}[local]
		if got := s.ledger[table].Elems[elemKey{m, key}]; got != want {
			t.Errorf("step %d (local endpoint %v): %s holds %q, want %q", i, local, m, got, want)
		}
	}
}

// A backends map written before its index was a plain integer (typed mark, without nft's typeof
// user data: its listing would not load back with nft -f) is replaced by the first sync.
func TestSyncerReplacesOldBackendsMaps(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	k := ServiceKey{"bench", "svc-00001"}
	shard := shardTable(shardOf(k))
	c := nftConn(t, node)
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: shard})
	old, err := nftables.ConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
	if err != nil {
		t.Fatal(err)
	}
	dt, err := nftables.ConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddSet(&nftables.Set{Table: table, Name: mapBackends(IPv4), IsMap: true, Concatenation: true, KeyType: old, DataType: dt}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	s := newTestSyncer(t, node)
	mustSync(t, s, benchWorld(3))
	checkLedger(t, s)
	sets, err := c.GetSets(table)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := keyType(IPv4, keyBackend)
	for _, set := range sets {
		if set.Name == mapBackends(IPv4) && set.KeyType.GetNFTMagic() != want.GetNFTMagic() {
			t.Errorf("%s keeps key type %s, want %s", set.Name, set.KeyType.Name, want.Name)
		}
	}
}
