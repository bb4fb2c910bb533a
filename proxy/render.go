package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// String renders the model as nft-like text, one table, sets and maps
// first, for golden tests and `nodenet inspect`. It is close to `nft list
// table` output but is not meant to be fed back to nft.
func (m Model) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "table inet %s {\n", m.Table)
	for _, s := range m.Sets {
		fmt.Fprintf(&sb, "\tset %s {\n\t\ttype %s\n", s.Name, addrType(s.Family))
		if s.Dynamic {
			fmt.Fprintf(&sb, "\t\tflags dynamic,timeout\n\t\ttimeout %s\n", nftDuration(s.Timeout.Seconds()))
		}
		if s.Comment != "" {
			fmt.Fprintf(&sb, "\t\tcomment %q\n", s.Comment)
		}
		if len(s.Elements) > 0 {
			var els []string
			for _, e := range s.Elements {
				els = append(els, e.String())
			}
			fmt.Fprintf(&sb, "\t\telements = { %s }\n", strings.Join(els, ", "))
		}
		sb.WriteString("\t}\n")
	}
	for _, vm := range m.Maps {
		var types []string
		for _, k := range vm.Key {
			switch k {
			case FieldDaddr, FieldSaddr:
				types = append(types, addrType(vm.Family))
			case FieldL4Proto:
				types = append(types, "inet_proto")
			case FieldDport:
				types = append(types, "inet_service")
			case FieldIndex:
				types = append(types, "mark") // as nft lists it (nft.go keyType)
			}
		}
		switch {
		case vm.Backends:
			fmt.Fprintf(&sb, "\tmap %s {\n\t\ttype %s : %s . inet_service\n", vm.Name, strings.Join(types, " . "), addrType(vm.Family))
		case vm.Plain:
			fmt.Fprintf(&sb, "\tset %s {\n\t\ttype %s\n", vm.Name, strings.Join(types, " . "))
		default:
			fmt.Fprintf(&sb, "\tmap %s {\n\t\ttype %s : verdict\n", vm.Name, strings.Join(types, " . "))
		}
		if len(vm.Elements) > 0 {
			sb.WriteString("\t\telements = {\n")
			for _, e := range vm.Elements {
				var parts []string
				switch {
				case slices.Equal(vm.Key, keyAddrPair):
					fmt.Fprintf(&sb, "\t\t\t%s . %s", e.Key.Addr, e.Key.Addr)
				default:
					if e.Key.Addr.IsValid() {
						parts = append(parts, e.Key.Addr.String())
					}
					parts = append(parts, string(e.Key.Proto), fmt.Sprint(e.Key.Port))
					if vm.Backends {
						parts = append(parts, fmt.Sprintf("0x%08x", e.Key.Index))
					}
					fmt.Fprintf(&sb, "\t\t\t%s", strings.Join(parts, " . "))
					switch {
					case vm.Backends:
						fmt.Fprintf(&sb, " : %s . %d", e.To.Addr(), e.To.Port())
					case !vm.Plain:
						fmt.Fprintf(&sb, " : %s", e.Verdict.render())
					}
				}
				if e.Comment != "" {
					fmt.Fprintf(&sb, " comment %q", e.Comment)
				}
				sb.WriteString(",\n")
			}
			sb.WriteString("\t\t}\n")
		}
		sb.WriteString("\t}\n")
	}
	for _, c := range m.Chains {
		fmt.Fprintf(&sb, "\tchain %s {\n", c.Name)
		if c.Base != nil {
			fmt.Fprintf(&sb, "\t\ttype %s hook %s priority %d; policy accept;\n", c.Base.Type, c.Base.Hook, c.Base.Priority)
		}
		for _, r := range c.Rules {
			fmt.Fprintf(&sb, "\t\t%s\n", r)
		}
		sb.WriteString("\t}\n")
	}
	sb.WriteString("}\n")
	return sb.String()
}

func (r Rule) String() string {
	var parts []string
	for _, m := range r.Matches {
		parts = append(parts, m.String())
	}
	parts = append(parts, r.Action.render())
	if r.Comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.Comment))
	}
	return strings.Join(parts, " ")
}

func (m Match) String() string {
	neg := ""
	if m.Neg {
		neg = "!= "
	}
	switch m.Field {
	case FieldSaddr, FieldDaddr:
		lhs := addrField(m.Family, m.Field)
		if m.Set != "" {
			return fmt.Sprintf("%s %s@%s", lhs, neg, m.Set)
		}
		return fmt.Sprintf("%s %s%s", lhs, neg, prefixList(m.Prefixes))
	case FieldL4Proto:
		return fmt.Sprintf("meta l4proto %s%s", neg, m.Proto)
	case FieldDport:
		return fmt.Sprintf("th dport %s%d", neg, m.Port)
	case FieldMark:
		if m.Neg {
			return fmt.Sprintf("meta mark & %#08x == 0", m.Mark)
		}
		return fmt.Sprintf("meta mark & %#08x != 0", m.Mark)
	case FieldFibDaddrLoc, FieldFibSaddrLoc:
		dir := "daddr"
		if m.Field == FieldFibSaddrLoc {
			dir = "saddr"
		}
		return fmt.Sprintf("fib %s type %slocal", dir, neg)
	case FieldNFProto:
		return "meta nfproto " + neg + familyName(m.Family)
	case FieldAddrPair, FieldServiceKey, FieldNodePortKey:
		return fmt.Sprintf("%s %s@%s", keyExpr(m.Family, m.Field.setKey()), neg, m.Set)
	}
	return fmt.Sprintf("<%s?>", m.Field)
}

func (a Action) render() string {
	switch a.Kind {
	case ActJump, ActGoto:
		return fmt.Sprintf("%s %s", a.Kind, a.Chain)
	case ActReject:
		return "reject with " + string(a.Reject)
	case ActDNAT:
		if a.Family == IPv6 {
			return fmt.Sprintf("dnat ip6 to %s", a.To)
		}
		return fmt.Sprintf("dnat ip to %s", a.To)
	case ActMasquerade:
		return "masquerade fully-random"
	case ActSetMark:
		return fmt.Sprintf("meta mark set meta mark | %#08x", a.Mark)
	case ActClearMark:
		return fmt.Sprintf("meta mark set meta mark ^ %#08x", a.Mark)
	case ActVmap:
		return fmt.Sprintf("%s vmap @%s", keyExpr(a.Family, a.Key), a.Map)
	case ActNumgen:
		var els []string
		for i, t := range a.Targets {
			els = append(els, fmt.Sprintf("%d : goto %s", i, t))
		}
		return fmt.Sprintf("numgen random mod %d vmap { %s }", len(a.Targets), strings.Join(els, ", "))
	case ActDNATNumgen:
		// Built by hand: every Service's rule is rendered for its
		// fingerprint, and this is the longest rendering.
		b := []byte("dnat ip")
		if a.Family == IPv6 {
			b = append(b, '6')
		}
		b = append(b, " addr . port to numgen random mod "...)
		b = strconv.AppendInt(b, int64(len(a.Backends)), 10)
		b = append(b, " map { "...)
		for i, be := range a.Backends {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = strconv.AppendInt(b, int64(i), 10)
			b = append(b, " : "...)
			b = be.Addr().AppendTo(b)
			b = append(b, " . "...)
			b = strconv.AppendUint(b, uint64(be.Port()), 10)
		}
		return string(append(b, " }"...))
	case ActDNATPick:
		return fmt.Sprintf("dnat %s to %s mod %d map @%s", perFamily(a.Family, "ip", "ip6"), keyExpr(a.Family, keyBackend), a.Count, a.Map)
	case ActUpdate:
		return fmt.Sprintf("update @%s { %s }", a.Set, keyExpr(a.Family, a.Key))
	}
	return string(a.Kind)
}

// value is what an element maps its key to, as the digest and the
// rendering show it: a backend, or a verdict ("" for plain sets).
func (e MapElement) value() string {
	if e.To.IsValid() {
		return e.To.String()
	}
	return e.Verdict.render()
}

func keyExpr(f Family, key []Field) string {
	var parts []string
	for _, k := range key {
		if k == FieldSaddr || k == FieldDaddr {
			parts = append(parts, addrField(f, k))
		} else {
			parts = append(parts, string(k))
		}
	}
	return strings.Join(parts, " . ")
}

func addrField(f Family, fld Field) string {
	if f == IPv6 {
		return "ip6 " + string(fld)
	}
	return "ip " + string(fld)
}

func addrType(f Family) string {
	if f == IPv6 {
		return "ipv6_addr"
	}
	return "ipv4_addr"
}

func familyName(f Family) string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

func prefixList(ps []netip.Prefix) string {
	var els []string
	for _, p := range ps {
		if p.IsSingleIP() {
			els = append(els, p.Addr().String())
		} else {
			els = append(els, p.String())
		}
	}
	if len(els) == 1 {
		return els[0]
	}
	return "{ " + strings.Join(els, ", ") + " }"
}

func nftDuration(secs float64) string {
	return fmt.Sprintf("%ds", int64(secs))
}
