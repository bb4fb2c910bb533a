package proxy

import (
	"net/netip"
	"time"
)

// Family is an IP family.
type Family uint8

// The IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// Model is a whole nftables table (family inet) as plain data. Slices are
// in a deterministic order so that rendering is stable.
type Model struct {
	Table  string
	Chains []Chain
	Sets   []Set
	Maps   []VerdictMap
}

// Hook makes a chain a base chain.
type Hook struct {
	Type     string // "filter" or "nat"
	Hook     string // "prerouting", "output", "postrouting", ...
	Priority int
}

// Chain is a chain; Base is nil for regular chains.
type Chain struct {
	Name  string
	Base  *Hook
	Rules []Rule
}

// Rule is a list of matches (all must hold) followed by one action.
type Rule struct {
	Matches []Match
	Action  Action
	Comment string
}

// Field is what a Match inspects.
type Field string

// Fields.
const (
	FieldSaddr       Field = "saddr"                // ip/ip6 saddr, per Match.Family
	FieldDaddr       Field = "daddr"                // ip/ip6 daddr, per Match.Family
	FieldL4Proto     Field = "meta l4proto"         // Match.Proto
	FieldDport       Field = "th dport"             // Match.Port
	FieldMark        Field = "meta mark"            // (mark & Match.Mark) != 0
	FieldFibDaddrLoc Field = "fib daddr type local" // destination is a local address
	FieldFibSaddrLoc Field = "fib saddr type local" // source is a local address
	FieldNFProto     Field = "meta nfproto"         // Match.Family
	// FieldAddrPair is saddr . daddr looked up in Match.Set, a pair set
	// whose elements are addresses paired with themselves: it holds for a
	// packet whose source and (translated) destination are the same listed
	// address, i.e. a pod that reached itself through a Service.
	FieldAddrPair Field = "saddr . daddr"
	// FieldServiceKey is daddr . meta l4proto . th dport looked up in
	// Match.Set, a set keyed as the Service maps are: it holds for a packet
	// to one of the listed Service addresses and ports.
	FieldServiceKey Field = "daddr . meta l4proto . th dport"
	// FieldNodePortKey is meta l4proto . th dport looked up in Match.Set, a
	// set keyed as the NodePort maps are. Nothing in it tests the family:
	// a rule wanting one says so with another match.
	FieldNodePortKey Field = "meta l4proto . th dport"
	// FieldIndex is the random index that ends a backend map's key
	// (numgen random mod the chain's count); it is never a match.
	FieldIndex Field = "numgen random"
)

// setKey is the key of the set a concatenation field is looked up in.
func (f Field) setKey() []Field {
	switch f {
	case FieldAddrPair:
		return keyAddrPair
	case FieldNodePortKey:
		return keyProtoPort
	}
	return keyAddrProtoPort
}

// Match tests one packet field. Neg inverts it. For address fields exactly
// one of Prefixes or Set is used: the address must be in one of the
// prefixes (a single address is a /32 or /128) or in the named set.
type Match struct {
	Field    Field
	Neg      bool
	Family   Family
	Prefixes []netip.Prefix
	Set      string
	Proto    Protocol
	Port     uint16
	Mark     uint32
}

// ActionKind is what a rule does once its matches hold.
type ActionKind string

// Action kinds. Mark, Update and (on a miss) Vmap continue with the next
// rule; Jump continues after the jumped-to chain returns.
const (
	ActJump       ActionKind = "jump"
	ActGoto       ActionKind = "goto"
	ActReturn     ActionKind = "return"
	ActAccept     ActionKind = "accept"
	ActDrop       ActionKind = "drop"
	ActReject     ActionKind = "reject"      // Reject says how
	ActDNAT       ActionKind = "dnat"        // To
	ActMasquerade ActionKind = "masquerade"  // fully-random
	ActSetMark    ActionKind = "mark set"    // mark |= Mark
	ActClearMark  ActionKind = "mark clear"  // mark &^= Mark (nft: mark ^ Mark after a test)
	ActVmap       ActionKind = "vmap"        // look Key up in Map
	ActNumgen     ActionKind = "numgen"      // goto Targets[random mod len]
	ActDNATNumgen ActionKind = "dnat numgen" // dnat to Backends[random mod len]
	// ActDNATPick is dnat to Map[daddr . l4proto . dport . random mod
	// Count]: the backends of the packet's own Service port, from a map
	// all such ports share (see pickChain).
	ActDNATPick ActionKind = "dnat pick"
	ActUpdate   ActionKind = "update" // add Key (saddr) to dynamic Set
)

// RejectKind says how a packet is rejected.
type RejectKind string

// Reject kinds.
const (
	RejectTCPReset        RejectKind = "tcp reset"
	RejectPortUnreachable RejectKind = "icmpx port-unreachable"
)

// Action is a rule's verdict or statement.
type Action struct {
	Kind    ActionKind
	Chain   string         // jump, goto
	Reject  RejectKind     // reject
	To      netip.AddrPort // dnat
	Mark    uint32         // mark set/clear
	Map     string         // vmap
	Key     []Field        // vmap key (saddr/daddr, meta l4proto, th dport); update key (saddr)
	Family  Family         // family of address fields in Key
	Targets []string       // numgen: chains to goto, index = random mod len
	// dnat numgen: backends, index = random mod len. One rule and no
	// chain per backend keeps the table small, and the kernel re-checks a
	// whole table on every change.
	Backends []netip.AddrPort
	Count    int    // dnat pick: the number of backends
	Set      string // update
}

// Set is a named set of addresses. Dynamic sets are filled by update
// actions from the packet path and forget entries after Timeout.
type Set struct {
	Name     string
	Family   Family
	Dynamic  bool
	Timeout  time.Duration
	Elements []netip.Addr
	Comment  string
}

// MapKey is a verdict-map key; Addr is invalid for maps keyed by
// l4proto . dport only. Index is a backend's place in a backend map.
type MapKey struct {
	Addr  netip.Addr
	Proto Protocol
	Port  uint16
	Index uint32
}

// MapElement maps a key to a verdict (goto, jump, drop or reject), or in
// a backend map to a backend.
type MapElement struct {
	Key     MapKey
	Verdict Action
	To      netip.AddrPort // backend maps
	Comment string
}

// VerdictMap is a named verdict map, or with Plain a set of keys without
// verdicts: the hairpin pair sets (key saddr . daddr, element X is X . X)
// and the ClusterIP keys to masquerade (key daddr . l4proto . dport).
type VerdictMap struct {
	Name   string
	Family Family
	Key    []Field // FieldDaddr?, FieldL4Proto, FieldDport; or FieldSaddr, FieldDaddr; FieldIndex last in a backend map
	Plain  bool
	// Backends marks a backend map: key daddr . l4proto . dport . index,
	// value a backend's address . port.
	Backends bool
	Elements []MapElement
}

// Chain returns the named chain and whether it exists.
func (m Model) Chain(name string) (Chain, bool) {
	for _, c := range m.Chains {
		if c.Name == name {
			return c, true
		}
	}
	return Chain{}, false
}

// Map returns the named verdict map and whether it exists.
func (m Model) Map(name string) (VerdictMap, bool) {
	for _, vm := range m.Maps {
		if vm.Name == name {
			return vm, true
		}
	}
	return VerdictMap{}, false
}

// SetByName returns the named set and whether it exists.
func (m Model) SetByName(name string) (Set, bool) {
	for _, s := range m.Sets {
		if s.Name == name {
			return s, true
		}
	}
	return Set{}, false
}
