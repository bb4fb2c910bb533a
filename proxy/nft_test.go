package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// queueModel queues a full plan for m on a connection that is never
// flushed: translation without a kernel.
func queueModel(m Model) (*Plan, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	p := planDiff(m.Table, newDigest(), desiredOf(m))
	return p, queue(c, &nftables.Table{Family: nftables.TableFamilyINet, Name: m.Table}, p)
}

func TestTranslateBuiltModels(t *testing.T) {
	for name, st := range map[string]State{"small": smallState(), "trace": traceState(), "empty": {Node: Node{Name: nodeA}}} {
		t.Run(name, func(t *testing.T) {
			m := Build(st)
			p, err := queueModel(m)
			if err != nil {
				t.Fatal(err)
			}
			var rules, elems int
			for _, c := range m.Chains {
				rules += len(c.Rules)
			}
			for _, vm := range m.Maps {
				elems += len(vm.Elements)
			}
			var planned int
			for _, c := range p.fill {
				planned += len(c.Rules)
			}
			if planned != rules || len(p.addChains) != len(m.Chains) || len(p.addSets) != len(m.Sets) ||
				len(p.addMaps) != len(m.Maps) || len(p.addElems) != elems {
				t.Errorf("plan has %d chains, %d rules, %d sets, %d maps, %d elements; model %d, %d, %d, %d, %d",
					len(p.addChains), planned, len(p.addSets), len(p.addMaps), len(p.addElems),
					len(m.Chains), rules, len(m.Sets), len(m.Maps), elems)
			}
			for _, c := range m.Chains {
				if !ownedName(c.Name) {
					t.Errorf("chain %s is not recognised as the proxy's", c.Name)
				}
			}
			for _, s := range m.Sets {
				if !ownedName(s.Name) {
					t.Errorf("set %s is not recognised as the proxy's", s.Name)
				}
			}
			for _, vm := range m.Maps {
				if !ownedName(vm.Name) {
					t.Errorf("map %s is not recognised as the proxy's", vm.Name)
				}
			}
		})
	}
}

func TestTranslateErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		m    Model
		want string
	}{
		"unknown action": {
			m:    Model{Table: TableName, Chains: []Chain{{Name: chainServices, Rules: []Rule{{Action: Action{Kind: "teleport"}}}}}},
			want: `chain services rule 0 (teleport): action teleport: unknown action "teleport"`,
		},
		"unknown field": {
			m:    Model{Table: TableName, Chains: []Chain{{Name: chainServices, Rules: []Rule{{Matches: []Match{{Field: "tos"}}, Action: Action{Kind: ActAccept}}}}}},
			want: `unknown field "tos"`,
		},
		"reject in map": {
			m: Model{Table: TableName, Maps: []VerdictMap{{Name: mapServiceNodePorts(IPv4), Family: IPv4, Key: keyProtoPort, Elements: []MapElement{
				{Key: MapKey{Proto: TCP, Port: 1}, Verdict: Action{Kind: ActReject, Reject: RejectTCPReset}},
			}}}},
			want: `map service-nodeports-v4 key`,
		},
		"routing chain": {
			m:    Model{Table: TableName, Chains: []Chain{{Name: podMasqueradeChain}}},
			want: "chain pod-masquerade is not the proxy's",
		},
		"unknown hook": {
			m:    Model{Table: TableName, Chains: []Chain{{Name: chainNatPrerouting, Base: &Hook{Type: "nat", Hook: "ingress"}}}},
			want: `unknown hook "ingress"`,
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := queueModel(tc.m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestKeyLoadRegisters(t *testing.T) {
	regs := func(es []expr.Any) []uint32 {
		var out []uint32
		for _, e := range es {
			switch e := e.(type) {
			case *expr.Payload:
				out = append(out, e.DestRegister)
			case *expr.Meta:
				if e.Key == expr.MetaKeyL4PROTO {
					out = append(out, e.Register)
				}
			}
		}
		return out
	}
	for _, tc := range []struct {
		f    Family
		key  []Field
		want []uint32
	}{
		{IPv4, keyAddrProtoPort, []uint32{1, 9, 10}},
		{IPv6, keyAddrProtoPort, []uint32{1, 12, 13}},
		{IPv4, keyProtoPort, []uint32{1, 9}},
	} {
		es, err := keyLoad(tc.f, tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, regs(es)); diff != "" {
			t.Errorf("family %d key %v registers (-want +got):\n%s", tc.f, tc.key, diff)
		}
	}
}

// The pick rule's key (address, protocol, port, index) and value (address,
// port) must sit in consecutive 32-bit registers without overlapping: NFT_REG32_00
// is register 1, the others 8 + word.
func TestDNATPickRegisters(t *testing.T) {
	for _, tc := range []struct {
		f                       Family
		index, out, addr, proto uint32
	}{
		{IPv4, 8 + 3, 8 + 4, 8 + 4, 8 + 5},
		{IPv6, 8 + 6, 8 + 7, 8 + 7, 8 + 11},
	} {
		es, err := dnatPick(Action{Kind: ActDNATPick, Map: mapBackends(tc.f), Family: tc.f, Count: 3})
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ index, lookupIn, lookupOut, addr, proto uint32 }
		for _, e := range es {
			switch e := e.(type) {
			case *expr.Numgen:
				got.index = e.Register
				if e.Modulus != 3 {
					t.Errorf("family %d: numgen mod %d, want 3", tc.f, e.Modulus)
				}
			case *expr.Lookup:
				got.lookupIn, got.lookupOut = e.SourceRegister, e.DestRegister
			case *expr.NAT:
				got.addr, got.proto = e.RegAddrMin, e.RegProtoMin
			}
		}
		want := struct{ index, lookupIn, lookupOut, addr, proto uint32 }{tc.index, 1, tc.out, tc.addr, tc.proto}
		if got != want {
			t.Errorf("family %d: registers %+v, want %+v", tc.f, got, want)
		}
	}
}

func TestMapKeyBytes(t *testing.T) {
	got, err := mapKeyBytes(IPv4, keyAddrProtoPort, MapKey{Addr: a("10.96.0.10"), Proto: TCP, Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("key bytes (-want +got):\n%s", diff)
	}
	kt, err := keyType(IPv4, keyAddrProtoPort)
	if err != nil {
		t.Fatal(err)
	}
	if int(kt.Bytes) != len(want) {
		t.Errorf("key type %s is %d bytes, key is %d", kt.Name, kt.Bytes, len(want))
	}
	if _, err := mapKeyBytes(IPv4, keyAddrProtoPort, MapKey{Addr: a("fd00::1"), Proto: TCP, Port: 80}); err == nil {
		t.Error("IPv6 key in an IPv4 map: no error")
	}
	// A backend map's key ends with the index as numgen writes it: host order.
	got, err = mapKeyBytes(IPv4, keyBackend, MapKey{Addr: a("10.96.0.10"), Proto: TCP, Port: 80, Index: 2})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, native32(2)...)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("backend key bytes (-want +got):\n%s", diff)
	}
	if kt, err = keyType(IPv4, keyBackend); err != nil || int(kt.Bytes) != len(want) {
		t.Errorf("backend key type %s is %d bytes (%v), key is %d", kt.Name, kt.Bytes, err, len(want))
	}
}

func TestIntervalElems(t *testing.T) {
	got := intervalElems([]netip.Prefix{pf("10.1.0.0/16"), pf("10.0.0.0/8"), pf("11.0.0.0/8"), pf("192.168.0.0/24"), pf("255.255.255.0/24")})
	want := []nftables.SetElement{
		{Key: a("10.0.0.0").AsSlice()},
		{Key: a("12.0.0.0").AsSlice(), IntervalEnd: true},
		{Key: a("192.168.0.0").AsSlice()},
		{Key: a("192.168.1.0").AsSlice(), IntervalEnd: true},
		{Key: a("255.255.255.0").AsSlice()},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("elements (-want +got):\n%s", diff)
	}
}

func TestOwnedName(t *testing.T) {
	for name, want := range map[string]bool{
		"pod-masquerade":          false,
		"services":                true,
		"service-ips-v4":          true,
		"nodeport-ips-v6":         true,
		"service-ABCDEFGH-ns/web": true,
		"endpoint-ABCD2345-x":     true,
		"local-routes":            false,
		"service-abcdefgh-x":      false,
		"__map0":                  false,
		"pick-2-v4":               true,
		"backends-v6":             true,
		"other":                   false,
	} {
		if got := ownedName(name); got != want {
			t.Errorf("ownedName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestAffinitySet(t *testing.T) {
	s, err := buildSet(&nftables.Table{Name: TableName}, Set{Name: "affinity-X", Family: IPv4, Dynamic: true, Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !s.set.Dynamic || !s.set.HasTimeout || s.set.Timeout != time.Hour || s.set.KeyType.Name != "ipv4_addr" {
		t.Errorf("affinity set %+v", s.set)
	}
	if _, err := buildSet(&nftables.Table{Name: TableName}, Set{Name: "x", Family: IPv4, Dynamic: true}); err == nil {
		t.Error("dynamic set without timeout: no error")
	}
}
