package routing

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The hostPort objects in the shared table inet nodenet. Every name starts with "hostport-", a
// prefix the Service proxy does not claim (proxy.ownedName), so neither touches the other's.
const (
	hpChainPrerouting  = "hostport-prerouting"
	hpChainOutput      = "hostport-output"
	hpChainDNAT        = "hostport-dnat"
	hpChainPostrouting = "hostport-postrouting"
)

// Priorities. DNAT runs just before the Service proxy's (dstnat, -100), so a hostPort wins over a
// NodePort of the same number, as the portmap plugin's rules, inserted first, do. The hairpin
// masquerade runs at srcnat with the other nodenet chains; NAT chains of one hook are consulted in
// turn until one binds the connection, so their order does not matter.
const (
	hpPrioDNAT = -101
	hpPrioSNAT = 100
)

// ipsDstNAT is IPS_DST_NAT of the conntrack status: the connection's destination was rewritten.
const ipsDstNAT = 0x20

// hpMap is one of the four DNAT maps: per family, keyed by protocol and port (mappings for every
// local address) or by address, protocol and port (mappings with a hostIP). The value is the pod's
// address and port.
//
// The two relay maps, hostport-relay-v4 and -v6, have the layout of the address maps and hold the
// mappings on a loopback hostIP, which no rule reads: a socket of the daemon serves them
// (localports). They are the record from which a restarted daemon opens those sockets again, as
// the DNAT maps are for the other mappings.
type hpMap struct {
	v6     bool
	byAddr bool
	relay  bool // with byAddr
}

var hpMaps = []hpMap{
	{v6: false, byAddr: true}, {v6: false}, {v6: true, byAddr: true}, {v6: true},
	{v6: false, byAddr: true, relay: true}, {v6: true, byAddr: true, relay: true},
}

func (m hpMap) name() string {
	kind := "any"
	switch {
	case m.relay:
		kind = "relay"
	case m.byAddr:
		kind = "addr"
	}
	return "hostport-" + kind + famTag(m.v6)
}

func famTag(v6 bool) string {
	if v6 {
		return "-v6"
	}
	return "-v4"
}

func addrType(v6 bool) nftables.SetDatatype {
	if v6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func (m hpMap) set(t *nftables.Table) *nftables.Set {
	key := []nftables.SetDatatype{nftables.TypeInetProto, nftables.TypeInetService}
	if m.byAddr {
		key = append([]nftables.SetDatatype{addrType(m.v6)}, key...)
	}
	return &nftables.Set{
		Table:         t,
		Name:          m.name(),
		IsMap:         true,
		Concatenation: true,
		KeyType:       nftables.MustConcatSetType(key...),
		DataType:      nftables.MustConcatSetType(addrType(m.v6), nftables.TypeInetService),
	}
}

// mapOf is the map an entry belongs to.
func mapOf(e hostPortEntry) hpMap {
	return hpMap{v6: e.v6(), byAddr: e.hostIP.IsValid(), relay: e.relayed()}
}

// hairpinSet holds "podIP . podIP" for every pod with a mapping in the family: a connection that a
// mapping sent back to the pod it came from is masqueraded, or the pod would answer itself
// directly and the client would drop the reply.
func hairpinSet(t *nftables.Table, v6 bool) *nftables.Set {
	return &nftables.Set{
		Table:         t,
		Name:          "hostport-hairpin" + famTag(v6),
		Concatenation: true,
		KeyType:       nftables.MustConcatSetType(addrType(v6), addrType(v6)),
	}
}

// Element layouts: each field of a concatenation padded to four bytes, in network byte order.

func protoPort(b []byte, proto uint8, port uint16) []byte {
	b = append(b, proto, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, port)
	return append(b, 0, 0)
}

func (e hostPortEntry) element(owner string) nftables.SetElement {
	var key []byte
	if e.hostIP.IsValid() {
		key = e.hostIP.AsSlice()
	}
	val := binary.BigEndian.AppendUint16(e.podIP.AsSlice(), e.podPort)
	return nftables.SetElement{Key: protoPort(key, e.proto, e.hostPort), Val: append(val, 0, 0), Comment: owner}
}

func hairpinElement(ip netip.Addr) nftables.SetElement {
	return nftables.SetElement{Key: append(ip.AsSlice(), ip.AsSlice()...)}
}

// decodeElement reads an element of map m back into an entry and its owner.
func (m hpMap) decodeElement(el nftables.SetElement) (hostPortEntry, string, error) {
	alen := 4
	if m.v6 {
		alen = 16
	}
	key := el.Key
	var e hostPortEntry
	if m.byAddr {
		if len(key) < alen {
			return e, "", fmt.Errorf("key %x is too short", el.Key)
		}
		e.hostIP, _ = netip.AddrFromSlice(key[:alen])
		key = key[alen:]
	}
	if len(key) != 8 || len(el.Val) != alen+4 {
		return e, "", fmt.Errorf("element %x : %x does not have the layout of map %s", el.Key, el.Val, m.name())
	}
	e.proto = key[0]
	e.hostPort = binary.BigEndian.Uint16(key[4:6])
	e.podIP, _ = netip.AddrFromSlice(el.Val[:alen])
	e.podPort = binary.BigEndian.Uint16(el.Val[alen : alen+2])
	return e, el.Comment, nil
}

func decodeHairpin(el nftables.SetElement) (netip.Addr, bool) {
	n := len(el.Key) / 2
	if (n != 4 && n != 16) || len(el.Key) != 2*n {
		return netip.Addr{}, false
	}
	a, _ := netip.AddrFromSlice(el.Key[:n])
	b, _ := netip.AddrFromSlice(el.Key[n:])
	return a, a == b
}

// hpChain is one of the hostPort chains, base chains with their hook.
type hpChain struct {
	name  string
	hook  *nftables.ChainHook // nil: a regular chain
	prio  int
	rules []hpRule
}

// hpRule is one rule of the hostPort chains in our own terms, so that the rule set can be printed
// and traced without a kernel. A zero field takes no part.
type hpRule struct {
	ctDNAT   bool   // ct status dnat
	family   int    // 4 or 6: meta nfproto
	fibLocal bool   // fib daddr type local
	noLoop   bool   // daddr outside loopback
	jump     string // jump to this chain
	dnat     *hpMap // dnat to the value of the key in this map
	hairpin  bool   // saddr . daddr in the family's hairpin set: masquerade
}

// hostPortChains is the whole fixed part of the hostPort rules. Only traffic to a local address is
// looked at (fib daddr type local, before any map lookup, also for mappings with a hostIP: a
// hostIP that is not an address of the node must never capture traffic that passes through it,
// the portmap plugin's CVE-2025-67499); a mapping with a hostIP then matches only its address, one
// without every local address except loopback.
func hostPortChains() []hpChain {
	pre, out, post := nftables.ChainHookPrerouting, nftables.ChainHookOutput, nftables.ChainHookPostrouting
	dnat := hpChain{name: hpChainDNAT}
	postRules := []hpRule{}
	for _, v6 := range []bool{false, true} {
		fam := 4
		if v6 {
			fam = 6
		}
		dnat.rules = append(dnat.rules,
			hpRule{family: fam, dnat: &hpMap{v6: v6, byAddr: true}},
			hpRule{family: fam, noLoop: true, dnat: &hpMap{v6: v6}},
		)
		postRules = append(postRules, hpRule{ctDNAT: true, family: fam, hairpin: true})
	}
	return []hpChain{
		{name: hpChainPrerouting, hook: pre, prio: hpPrioDNAT, rules: []hpRule{{fibLocal: true, jump: hpChainDNAT}}},
		{name: hpChainOutput, hook: out, prio: hpPrioDNAT, rules: []hpRule{{fibLocal: true, jump: hpChainDNAT}}},
		dnat,
		{name: hpChainPostrouting, hook: post, prio: hpPrioSNAT, rules: postRules},
	}
}

var loopbacks = map[int]netip.Prefix{4: netip.MustParsePrefix("127.0.0.0/8"), 6: netip.MustParsePrefix("::1/128")}

// String renders the rule as nft lists it.
func (r hpRule) String() string {
	var parts []string
	ip := "ip"
	if r.family == 6 {
		ip = "ip6"
	}
	if r.ctDNAT {
		parts = append(parts, "ct status dnat")
	}
	if r.family != 0 {
		parts = append(parts, fmt.Sprintf("meta nfproto ipv%d", r.family))
	}
	if r.fibLocal {
		parts = append(parts, "fib daddr type local")
	}
	if r.noLoop {
		parts = append(parts, fmt.Sprintf("%s daddr != %s", ip, loopbacks[r.family]))
	}
	switch {
	case r.jump != "":
		parts = append(parts, "jump "+r.jump)
	case r.dnat != nil:
		key := "meta l4proto . th dport"
		if r.dnat.byAddr {
			key = ip + " daddr . " + key
		}
		parts = append(parts, fmt.Sprintf("dnat %s to %s map @%s", ip, key, r.dnat.name()))
	case r.hairpin:
		parts = append(parts, fmt.Sprintf("%s saddr . %s daddr @%s masquerade", ip, ip, hairpinSet(nil, r.family == 6).Name))
	}
	return strings.Join(parts, " ")
}

// Registers as the kernel numbers them: 1 and 2 are the first two 16-byte registers, 9 and up the
// 4-byte ones after the first (8 is the start of register 1). A concatenation is loaded from
// register 1 on, each field padded to 4 bytes; the kernel reports a register that starts a
// 16-byte one by its 16-byte number, so that is the number used here too and rules read back
// compare equal.
func reg32(word uint32) uint32 {
	if word%4 == 0 {
		return 1 + word/4
	}
	return unix.NFT_REG32_00 + word
}

func (r hpRule) exprs() []expr.Any {
	var e []expr.Any
	if r.ctDNAT {
		e = append(e,
			&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		)
	}
	v6 := r.family == 6
	if r.family != 0 {
		proto := byte(unix.NFPROTO_IPV4)
		if v6 {
			proto = unix.NFPROTO_IPV6
		}
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		)
	}
	if r.fibLocal {
		e = append(e,
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		)
	}
	if r.noLoop {
		lo := loopbacks[r.family]
		alen := uint32(lo.Addr().BitLen() / 8)
		e = append(e, addrLoad(v6, true, 1))
		if lo.Bits() < lo.Addr().BitLen() {
			e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: alen,
				Mask: net.CIDRMask(lo.Bits(), lo.Addr().BitLen()), Xor: make([]byte, alen)})
		}
		e = append(e, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: lo.Addr().AsSlice()})
	}
	switch {
	case r.jump != "":
		e = append(e, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.jump})
	case r.dnat != nil:
		var word uint32
		if r.dnat.byAddr {
			e = append(e, addrLoad(v6, true, 1))
			word = uint32(addrType(v6).Bytes / 4)
		}
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(word)},
			&expr.Payload{DestRegister: reg32(word + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: r.dnat.name()},
		)
		// The value, address then port, lands in the registers from 1 on.
		family := uint32(unix.NFPROTO_IPV4)
		if v6 {
			family = unix.NFPROTO_IPV6
		}
		port := reg32(addrType(v6).Bytes / 4)
		e = append(e, &expr.NAT{Type: expr.NATTypeDestNAT, Family: family,
			RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: port, RegProtoMax: port, Specified: true})
	case r.hairpin:
		e = append(e,
			addrLoad(v6, false, 1),
			addrLoad(v6, true, reg32(addrType(v6).Bytes/4)),
			&expr.Lookup{SourceRegister: 1, SetName: hairpinSet(nil, v6).Name},
			&expr.Masq{},
		)
	}
	return e
}

// addrLoad loads the source or destination address into reg; the rule has checked the family.
func addrLoad(v6, dst bool, reg uint32) *expr.Payload {
	off, size := uint32(12), uint32(4) // IPv4 saddr
	if v6 {
		off, size = 8, 16
	}
	if dst {
		off += size
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size}
}
