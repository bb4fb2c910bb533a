package proxy

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// This file is layer 2: pure builders that turn the Model into
// google/nftables objects. Nothing here talks to the kernel; apply.go sends
// the result in one batch.

// podMasqueradeChain is the routing package's chain in the shared table.
// The proxy never creates, flushes or deletes it.
const podMasqueradeChain = "pod-masquerade"

// anonSetIDBase is where the IDs of the anonymous sets (numgen maps,
// multi-prefix matches) start. Rules refer to anonymous sets by ID within
// the batch; google/nftables numbers the named sets from 1, so the ranges
// do not meet.
const anonSetIDBase = 1 << 30

// nftSet is a set or map with its elements.
type nftSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

// translator carries what rule translation accumulates: the anonymous sets.
type translator struct {
	table *nftables.Table
	anon  []nftSet
}

var (
	hookNums = map[string]*nftables.ChainHook{
		"prerouting":  nftables.ChainHookPrerouting,
		"input":       nftables.ChainHookInput,
		"forward":     nftables.ChainHookForward,
		"output":      nftables.ChainHookOutput,
		"postrouting": nftables.ChainHookPostrouting,
	}
	chainTypes = map[string]nftables.ChainType{
		"filter": nftables.ChainTypeFilter,
		"nat":    nftables.ChainTypeNAT,
		"route":  nftables.ChainTypeRoute,
	}
)

// buildChain makes a regular chain, or a base chain with policy accept.
func buildChain(t *nftables.Table, c Chain) (*nftables.Chain, error) {
	ch := &nftables.Chain{Name: c.Name, Table: t}
	if c.Base == nil {
		return ch, nil
	}
	hook, ok := hookNums[c.Base.Hook]
	if !ok {
		return nil, fmt.Errorf("chain %s: unknown hook %q", c.Name, c.Base.Hook)
	}
	typ, ok := chainTypes[c.Base.Type]
	if !ok {
		return nil, fmt.Errorf("chain %s: unknown chain type %q", c.Name, c.Base.Type)
	}
	accept := nftables.ChainPolicyAccept
	ch.Hooknum = hook
	ch.Type = typ
	ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.Base.Priority))
	ch.Policy = &accept
	return ch, nil
}

func addrSetType(f Family) nftables.SetDatatype {
	if f == IPv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

// buildSet makes a named address set; a dynamic one carries a default
// timeout that update statements refresh.
func buildSet(t *nftables.Table, s Set) (nftSet, error) {
	if s.Family != IPv4 && s.Family != IPv6 {
		return nftSet{}, fmt.Errorf("set %s: unknown family %d", s.Name, s.Family)
	}
	ns := nftSet{set: &nftables.Set{
		Table:   t,
		Name:    s.Name,
		KeyType: addrSetType(s.Family),
		Comment: s.Comment,
	}}
	if s.Dynamic {
		if s.Timeout <= 0 {
			return nftSet{}, fmt.Errorf("set %s: dynamic set without timeout", s.Name)
		}
		ns.set.Dynamic = true
		ns.set.HasTimeout = true
		ns.set.Timeout = s.Timeout
	}
	for _, a := range s.Elements {
		if familyOf(a) != s.Family {
			return nftSet{}, fmt.Errorf("set %s: element %s is not of family %d", s.Name, a, s.Family)
		}
		ns.elems = append(ns.elems, nftables.SetElement{Key: a.AsSlice()})
	}
	return ns, nil
}

// keyType is the (possibly concatenated) type of a key made of fields.
func keyType(f Family, key []Field) (nftables.SetDatatype, error) {
	var types []nftables.SetDatatype
	for _, k := range key {
		switch k {
		case FieldSaddr, FieldDaddr:
			types = append(types, addrSetType(f))
		case FieldL4Proto:
			types = append(types, nftables.TypeInetProto)
		case FieldDport:
			types = append(types, nftables.TypeInetService)
		case FieldIndex:
			// A plain integer, as numgen makes it; nft learns its length
			// from the map's typeof user data (setuserdata.go).
			types = append(types, nftables.TypeInteger)
		default:
			return nftables.SetDatatype{}, fmt.Errorf("field %q cannot be part of a key", k)
		}
	}
	switch len(types) {
	case 0:
		return nftables.SetDatatype{}, fmt.Errorf("empty key")
	case 1:
		return types[0], nil
	}
	return nftables.ConcatSetType(types...)
}

// buildMap makes a named verdict map keyed by a concatenation.
func buildMap(t *nftables.Table, vm VerdictMap) (nftSet, error) {
	kt, err := keyType(vm.Family, vm.Key)
	if err != nil {
		return nftSet{}, fmt.Errorf("map %s: %w", vm.Name, err)
	}
	ns := nftSet{set: &nftables.Set{
		Table:         t,
		Name:          vm.Name,
		IsMap:         !vm.Plain,
		KeyType:       kt,
		Concatenation: len(vm.Key) > 1,
	}}
	switch {
	case vm.Backends:
		dt, err := nftables.ConcatSetType(addrSetType(vm.Family), nftables.TypeInetService)
		if err != nil {
			return nftSet{}, fmt.Errorf("map %s: %w", vm.Name, err)
		}
		ns.set.DataType = dt
	case !vm.Plain:
		ns.set.DataType = nftables.TypeVerdict
	}
	for _, e := range vm.Elements {
		el, err := setElement(vm, e)
		if err != nil {
			return nftSet{}, fmt.Errorf("map %s element %v: %w", vm.Name, e.Key, err)
		}
		ns.elems = append(ns.elems, el)
	}
	return ns, nil
}

// setElement lays out one element of map vm: its key, and its verdict or
// backend.
func setElement(vm VerdictMap, e MapElement) (nftables.SetElement, error) {
	key, err := mapKeyBytes(vm.Family, vm.Key, e.Key)
	if err != nil {
		return nftables.SetElement{}, err
	}
	switch {
	case vm.Plain:
		return nftables.SetElement{Key: key}, nil
	case vm.Backends:
		if !e.To.IsValid() || familyOf(e.To.Addr()) != vm.Family {
			return nftables.SetElement{}, fmt.Errorf("backend %v is not of family %d", e.To, vm.Family)
		}
		return nftables.SetElement{Key: key, Val: backendBytes(e.To)}, nil
	}
	v, err := verdict(e.Verdict)
	if err != nil {
		return nftables.SetElement{}, err
	}
	return nftables.SetElement{Key: key, VerdictData: v, Comment: e.Comment}, nil
}

// backendBytes lays a backend out as a DNAT map's value: the address, then
// the port in network byte order, padded to four bytes.
func backendBytes(b netip.AddrPort) []byte {
	return append(binary.BigEndian.AppendUint16(b.Addr().AsSlice(), b.Port()), 0, 0)
}

// mapKeyBytes lays a key out as the kernel compares it: each field padded
// to a multiple of four bytes, in network byte order.
func mapKeyBytes(f Family, fields []Field, k MapKey) ([]byte, error) {
	var b []byte
	for _, fld := range fields {
		switch fld {
		case FieldSaddr, FieldDaddr:
			if !k.Addr.IsValid() || familyOf(k.Addr) != f {
				return nil, fmt.Errorf("address %v is not of family %d", k.Addr, f)
			}
			b = append(b, k.Addr.AsSlice()...)
		case FieldL4Proto:
			p, err := protoNum(k.Proto)
			if err != nil {
				return nil, err
			}
			b = append(b, p, 0, 0, 0)
		case FieldDport:
			b = binary.BigEndian.AppendUint16(b, k.Port)
			b = append(b, 0, 0)
		case FieldIndex:
			// numgen writes its result in host byte order.
			b = append(b, native32(k.Index)...)
		default:
			return nil, fmt.Errorf("field %q cannot be part of a key", fld)
		}
	}
	return b, nil
}

func protoNum(p Protocol) (byte, error) {
	switch p {
	case TCP:
		return unix.IPPROTO_TCP, nil
	case UDP:
		return unix.IPPROTO_UDP, nil
	case SCTP:
		return unix.IPPROTO_SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", p)
}

func nfproto(f Family) (byte, error) {
	switch f {
	case IPv4:
		return unix.NFPROTO_IPV4, nil
	case IPv6:
		return unix.NFPROTO_IPV6, nil
	}
	return 0, fmt.Errorf("unknown family %d", f)
}

// verdict is a verdict a map element or a rule can end with.
func verdict(a Action) (*expr.Verdict, error) {
	switch a.Kind {
	case ActJump, ActGoto:
		if a.Chain == "" {
			return nil, fmt.Errorf("%s without chain", a.Kind)
		}
		kind := expr.VerdictJump
		if a.Kind == ActGoto {
			kind = expr.VerdictGoto
		}
		return &expr.Verdict{Kind: kind, Chain: a.Chain}, nil
	case ActReturn:
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case ActAccept:
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	case ActDrop:
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	}
	return nil, fmt.Errorf("action %q is not a verdict", a.Kind)
}

// reg32 is the 32-bit register holding word w of a concatenation that
// starts in register 1 (NFT_REG32_00 + w, which is register 1 for w = 0).
func reg32(w uint32) uint32 {
	if w == 0 {
		return 1
	}
	return unix.NFT_REG32_00 + w
}

// addrLoad checks the network protocol, as an inet chain sees both, and
// loads the source or destination address into reg.
func addrLoad(f Family, fld Field, reg uint32) ([]expr.Any, error) {
	p, err := nfproto(f)
	if err != nil {
		return nil, err
	}
	var off, size uint32
	switch {
	case f == IPv4 && fld == FieldSaddr:
		off, size = 12, 4
	case f == IPv4 && fld == FieldDaddr:
		off, size = 16, 4
	case f == IPv6 && fld == FieldSaddr:
		off, size = 8, 16
	case f == IPv6 && fld == FieldDaddr:
		off, size = 24, 16
	default:
		return nil, fmt.Errorf("field %q is not an address", fld)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
	}, nil
}

// keyLoad loads a (concatenated) key into the registers from 1 on. The
// family check of an address field comes first, as it uses register 1.
func keyLoad(f Family, key []Field) ([]expr.Any, error) {
	var checks, loads []expr.Any
	var word uint32
	for _, k := range key {
		reg := reg32(word)
		switch k {
		case FieldSaddr, FieldDaddr:
			e, err := addrLoad(f, k, reg)
			if err != nil {
				return nil, err
			}
			checks = append(checks, e[:2]...)
			loads = append(loads, e[2])
			word += uint32(addrSetType(f).Bytes / 4)
		case FieldL4Proto:
			loads = append(loads, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg})
			word++
		case FieldDport:
			loads = append(loads, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
			word++
		default:
			return nil, fmt.Errorf("field %q cannot be part of a key", k)
		}
	}
	return append(checks, loads...), nil
}

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// ruleExprs translates one rule: its matches, then its action.
func (tr *translator) ruleExprs(r Rule) ([]expr.Any, error) {
	var out []expr.Any
	for _, m := range r.Matches {
		e, err := tr.matchExprs(m)
		if err != nil {
			return nil, fmt.Errorf("match %s: %w", m, err)
		}
		out = append(out, e...)
	}
	e, err := tr.actionExprs(r.Action)
	if err != nil {
		return nil, fmt.Errorf("action %s: %w", r.Action.render(), err)
	}
	return append(out, e...), nil
}

func cmpOp(neg bool) expr.CmpOp {
	if neg {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

func (tr *translator) matchExprs(m Match) ([]expr.Any, error) {
	switch m.Field {
	case FieldSaddr, FieldDaddr:
		return tr.addrMatch(m)
	case FieldL4Proto:
		p, err := protoNum(m.Proto)
		if err != nil {
			return nil, err
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: cmpOp(m.Neg), Register: 1, Data: []byte{p}},
		}, nil
	case FieldDport:
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: cmpOp(m.Neg), Register: 1, Data: binaryutil.BigEndian.PutUint16(m.Port)},
		}, nil
	case FieldMark:
		if m.Mark == 0 {
			return nil, fmt.Errorf("mark match without bits")
		}
		// (mark & Mark) != 0; negated: == 0.
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(m.Mark), Xor: native32(0)},
			&expr.Cmp{Op: cmpOp(!m.Neg), Register: 1, Data: native32(0)},
		}, nil
	case FieldFibDaddrLoc, FieldFibSaddrLoc:
		return []expr.Any{
			&expr.Fib{Register: 1, ResultADDRTYPE: true, FlagDADDR: m.Field == FieldFibDaddrLoc, FlagSADDR: m.Field == FieldFibSaddrLoc},
			&expr.Cmp{Op: cmpOp(m.Neg), Register: 1, Data: native32(unix.RTN_LOCAL)},
		}, nil
	case FieldNFProto:
		p, err := nfproto(m.Family)
		if err != nil {
			return nil, err
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: cmpOp(m.Neg), Register: 1, Data: []byte{p}},
		}, nil
	case FieldAddrPair, FieldServiceKey, FieldNodePortKey:
		if m.Set == "" {
			return nil, fmt.Errorf("%s match without set", m.Field)
		}
		load, err := keyLoad(m.Family, m.Field.setKey())
		if err != nil {
			return nil, err
		}
		return append(load, &expr.Lookup{SourceRegister: 1, SetName: m.Set, Invert: m.Neg}), nil
	}
	return nil, fmt.Errorf("unknown field %q", m.Field)
}

// addrMatch matches an address against a named set, one prefix
// (bitwise + cmp) or several prefixes (an anonymous interval set).
func (tr *translator) addrMatch(m Match) ([]expr.Any, error) {
	load, err := addrLoad(m.Family, m.Field, 1)
	if err != nil {
		return nil, err
	}
	switch {
	case m.Set != "" && len(m.Prefixes) > 0:
		return nil, fmt.Errorf("both a set and prefixes")
	case m.Set != "":
		return append(load, &expr.Lookup{SourceRegister: 1, SetName: m.Set, Invert: m.Neg}), nil
	case len(m.Prefixes) == 0:
		return nil, fmt.Errorf("neither a set nor prefixes")
	}
	for _, p := range m.Prefixes {
		if !p.IsValid() || familyOf(p.Addr()) != m.Family {
			return nil, fmt.Errorf("prefix %v is not of family %d", p, m.Family)
		}
	}
	if len(m.Prefixes) == 1 {
		p := m.Prefixes[0].Masked()
		size := uint32(p.Addr().BitLen() / 8)
		if p.Bits() < p.Addr().BitLen() {
			load = append(load, &expr.Bitwise{
				SourceRegister: 1, DestRegister: 1, Len: size,
				Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
				Xor:  make([]byte, size),
			})
		}
		return append(load, &expr.Cmp{Op: cmpOp(m.Neg), Register: 1, Data: p.Addr().AsSlice()}), nil
	}
	s := tr.addAnon(&nftables.Set{Interval: true, KeyType: addrSetType(m.Family)}, intervalElems(m.Prefixes))
	return append(load, &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: m.Neg}), nil
}

// addAnon records an anonymous constant set and gives it its batch ID.
func (tr *translator) addAnon(s *nftables.Set, elems []nftables.SetElement) *nftables.Set {
	s.Table = tr.table
	s.Anonymous = true
	s.Constant = true
	s.ID = anonSetIDBase + uint32(len(tr.anon))
	s.Name = "__set%d"
	if s.IsMap {
		s.Name = "__map%d"
	}
	tr.anon = append(tr.anon, nftSet{set: s, elems: elems})
	return s
}

// intervalElems turns prefixes into the elements of an interval set: a
// start, and an end marker one past the last address unless the range
// reaches the top of the address space. Overlapping and adjacent prefixes
// are merged, as the kernel rejects overlaps.
func intervalElems(ps []netip.Prefix) []nftables.SetElement {
	type rng struct{ first, last netip.Addr }
	var rs []rng
	for _, p := range ps {
		p = p.Masked()
		rs = append(rs, rng{p.Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, func(a, b rng) int { return cmp.Or(a.first.Compare(b.first), a.last.Compare(b.last)) })
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 {
			prev := &merged[n-1]
			if next := prev.last.Next(); !next.IsValid() || r.first.Compare(next) <= 0 {
				if r.last.Compare(prev.last) > 0 {
					prev.last = r.last
				}
				continue
			}
		}
		merged = append(merged, r)
	}
	var out []nftables.SetElement
	for _, r := range merged {
		out = append(out, nftables.SetElement{Key: r.first.AsSlice()})
		if end := r.last.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (tr *translator) actionExprs(a Action) ([]expr.Any, error) {
	switch a.Kind {
	case ActJump, ActGoto, ActReturn, ActAccept, ActDrop:
		v, err := verdict(a)
		if err != nil {
			return nil, err
		}
		return []expr.Any{v}, nil
	case ActReject:
		switch a.Reject {
		case RejectTCPReset:
			return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}, nil
		case RejectPortUnreachable:
			return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}, nil
		}
		return nil, fmt.Errorf("unknown reject kind %q", a.Reject)
	case ActDNAT:
		if !a.To.IsValid() || familyOf(a.To.Addr()) != a.Family {
			return nil, fmt.Errorf("destination %v is not of family %d", a.To, a.Family)
		}
		fam, err := nfproto(a.Family)
		if err != nil {
			return nil, err
		}
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: a.To.Addr().AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(a.To.Port())},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(fam), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}, nil
	case ActMasquerade:
		return []expr.Any{&expr.Masq{FullyRandom: true}}, nil
	case ActSetMark, ActClearMark:
		if a.Mark == 0 {
			return nil, fmt.Errorf("mark action without bits")
		}
		// mark = (mark & mask) ^ xor: set is & ^Mark ^ Mark, clear is & ^Mark.
		xor := a.Mark
		if a.Kind == ActClearMark {
			xor = 0
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^a.Mark), Xor: native32(xor)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}, nil
	case ActVmap:
		if a.Map == "" {
			return nil, fmt.Errorf("vmap without map")
		}
		load, err := keyLoad(a.Family, a.Key)
		if err != nil {
			return nil, err
		}
		return append(load, &expr.Lookup{SourceRegister: 1, SetName: a.Map, DestRegister: 0, IsDestRegSet: true}), nil
	case ActNumgen:
		if len(a.Targets) == 0 {
			return nil, fmt.Errorf("numgen without targets")
		}
		var elems []nftables.SetElement
		for i, c := range a.Targets {
			elems = append(elems, nftables.SetElement{Key: native32(uint32(i)), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: c}})
		}
		s := tr.addAnon(&nftables.Set{IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}, elems)
		return []expr.Any{
			&expr.Numgen{Register: 1, Modulus: uint32(len(a.Targets)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, DestRegister: 0, IsDestRegSet: true},
		}, nil
	case ActDNATNumgen:
		return tr.dnatNumgen(a)
	case ActDNATPick:
		return dnatPick(a)
	case ActUpdate:
		if a.Set == "" {
			return nil, fmt.Errorf("update without set")
		}
		load, err := keyLoad(a.Family, a.Key)
		if err != nil {
			return nil, err
		}
		return append(load, &expr.Dynset{SrcRegKey: 1, SetName: a.Set, Operation: unix.NFT_DYNSET_OP_UPDATE}), nil
	}
	return nil, fmt.Errorf("unknown action %q", a.Kind)
}

// ownedName reports whether a chain, set or map of the shared table is the
// proxy's: a fixed name of the skeleton, or a per-service name (a known
// prefix, 8 base32 characters of hash, a dash). pod-masquerade never is.
func ownedName(name string) bool {
	if name == podMasqueradeChain || strings.HasPrefix(name, "__") {
		return false
	}
	if isPickChain(name) {
		return true
	}
	switch name {
	case "filter-prerouting", "filter-output", // an earlier release's, removed on upgrade
		chainNatPrerouting, chainNatOutput, chainNatPostrouting,
		chainServices, chainEndpointsCheck, chainFirewallCheck, chainMarkMasq, chainMasquerading, chainReject:
		return true
	}
	for _, f := range families {
		switch name {
		case mapServiceIPs(f), mapServiceNodePorts(f), mapNoEPServices(f), mapNoEPNodePorts(f), mapFirewallIPs(f), setNodePortIPs(f), setHairpin(f), setClusterIPs(f), setServiceKeys(f), setNodePortKeys(f), mapBackends(f), chainNodePorts(f):
			return true
		}
	}
	for _, p := range []string{"service-", "local-", "external-", "firewall-", "no-local-", "endpoint-", "affinity-"} {
		rest, ok := strings.CutPrefix(name, p)
		if !ok || len(rest) < 10 || rest[8] != '-' {
			continue
		}
		if !strings.ContainsFunc(rest[:8], func(r rune) bool { return !(r >= 'A' && r <= 'Z' || r >= '2' && r <= '7') }) {
			return true
		}
	}
	return false
}

// dnatNumgen picks a backend at random from an anonymous map of
// address . port, loaded into registers 1 (address) and the 32-bit
// register after the address (port), and DNATs to it.
func (tr *translator) dnatNumgen(a Action) ([]expr.Any, error) {
	if len(a.Backends) == 0 {
		return nil, fmt.Errorf("dnat numgen without backends")
	}
	fam, err := nfproto(a.Family)
	if err != nil {
		return nil, err
	}
	dt, err := nftables.ConcatSetType(addrSetType(a.Family), nftables.TypeInetService)
	if err != nil {
		return nil, err
	}
	var elems []nftables.SetElement
	for i, b := range a.Backends {
		if !b.IsValid() || familyOf(b.Addr()) != a.Family {
			return nil, fmt.Errorf("backend %v is not of family %d", b, a.Family)
		}
		elems = append(elems, nftables.SetElement{Key: native32(uint32(i)), Val: backendBytes(b)})
	}
	s := tr.addAnon(&nftables.Set{IsMap: true, KeyType: nftables.TypeInteger, DataType: dt, KeyByteOrder: binaryutil.NativeEndian}, elems)
	portReg := reg32(uint32(addrSetType(a.Family).Bytes / 4))
	return []expr.Any{
		&expr.Numgen{Register: 1, Modulus: uint32(len(a.Backends)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, DestRegister: 1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(fam), RegAddrMin: 1, RegProtoMin: portReg, Specified: true},
	}, nil
}

// dnatPick translates a pick chain's rule: the packet's address, protocol
// and port and a random index below Count make the key of the backend map,
// whose value (address, port) is the DNAT target.
func dnatPick(a Action) ([]expr.Any, error) {
	if a.Count < 1 {
		return nil, fmt.Errorf("dnat pick of %d backends", a.Count)
	}
	fam, err := nfproto(a.Family)
	if err != nil {
		return nil, err
	}
	exprs, err := keyLoad(a.Family, keyAddrProtoPort)
	if err != nil {
		return nil, err
	}
	addrWords := uint32(addrSetType(a.Family).Bytes / 4)
	index := addrWords + 2 // after the address, the protocol and the port
	out := index + 1       // the value follows the key
	return append(exprs,
		&expr.Numgen{Register: reg32(index), Modulus: uint32(a.Count), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg32(0), SetName: a.Map, DestRegister: reg32(out), IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(fam), RegAddrMin: reg32(out), RegProtoMin: reg32(out + addrWords), Specified: true},
	), nil
}
