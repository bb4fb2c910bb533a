package proxy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Packet is the first packet of a new connection, as the tracer sees it.
type Packet struct {
	Src, Dst netip.Addr
	Proto    Protocol
	DPort    uint16
	// Local marks a packet sent by a process on the node itself; it takes
	// the output hooks instead of prerouting.
	Local bool
}

// SetUpdate is an element a packet adds to a dynamic set.
type SetUpdate struct {
	Set  string
	Addr netip.Addr
}

// Path is one way a packet can go through the ruleset. numgen makes one
// Path per backend; everything else is deterministic.
type Path struct {
	Verdict    ActionKind // ActAccept, ActDrop or ActReject
	Reject     RejectKind
	DNAT       netip.AddrPort // zero if not DNATed
	Masquerade bool
	Updates    []SetUpdate
	Chains     []string // chains evaluated, in order
	Err        string   // set when the model is malformed (missing chain, loop)

	mark uint32
}

// String is a compact form for tests and `nodenet inspect`, e.g.
// "dnat 10.0.0.1:80 masquerade", "reject with tcp reset", "drop".
func (p Path) String() string {
	if p.Err != "" {
		return "error: " + p.Err
	}
	switch p.Verdict {
	case ActDrop:
		return "drop"
	case ActReject:
		return "reject with " + string(p.Reject)
	}
	var parts []string
	if p.DNAT.IsValid() {
		parts = append(parts, "dnat "+p.DNAT.String())
	}
	if p.Masquerade {
		parts = append(parts, "masquerade")
	}
	if len(parts) == 0 {
		return "accept"
	}
	return strings.Join(parts, " ")
}

// Tracer evaluates a Model for single packets the way the kernel would:
// base chains in hook and priority order, jumps and gotos, verdict maps,
// numgen (every branch), marks, and dynamic affinity sets. Connections are
// always new (ct state new holds); conntrack is not modelled.
type Tracer struct {
	Model Model
	// LocalAddrs are the node's addresses, for `fib ... type local`.
	// Loopback addresses are always local.
	LocalAddrs []netip.Addr
	dynamic    map[string]map[netip.Addr]bool
}

// Trace is a one-shot Tracer.Trace with empty affinity sets.
func Trace(m Model, localAddrs []netip.Addr, pkt Packet) []Path {
	t := &Tracer{Model: m, LocalAddrs: localAddrs}
	return t.Trace(pkt)
}

// Commit applies a path's dynamic-set updates, as if the packet had taken
// that path; later traces see the affinity entries. Timeouts are not
// modelled.
func (t *Tracer) Commit(p Path) {
	if t.dynamic == nil {
		t.dynamic = map[string]map[netip.Addr]bool{}
	}
	for _, u := range p.Updates {
		if t.dynamic[u.Set] == nil {
			t.dynamic[u.Set] = map[netip.Addr]bool{}
		}
		t.dynamic[u.Set][u.Addr] = true
	}
}

var hookOrder = map[string]int{"prerouting": 0, "output": 0, "postrouting": 2}

// Trace returns every path the packet can take, sorted by String.
func (t *Tracer) Trace(pkt Packet) []Path {
	first := "prerouting"
	if pkt.Local {
		first = "output"
	}
	var bases []Chain
	for _, c := range t.Model.Chains {
		if c.Base != nil && (c.Base.Hook == first || c.Base.Hook == "postrouting") {
			bases = append(bases, c)
		}
	}
	slices.SortStableFunc(bases, func(a, b Chain) int {
		return cmp.Or(cmp.Compare(hookOrder[a.Base.Hook], hookOrder[b.Base.Hook]), cmp.Compare(a.Base.Priority, b.Base.Priority))
	})

	live := []Path{{}}
	var done []Path
	for _, base := range bases {
		var next []Path
		for _, p := range live {
			q := pkt
			if base.Base.Hook == "postrouting" && p.DNAT.IsValid() {
				q.Dst, q.DPort = p.DNAT.Addr(), p.DNAT.Port() // postrouting sees the translated packet
			}
			for _, o := range t.runChain(base.Name, q, p, 0) {
				switch o.kind {
				case ActDrop, ActReject:
					o.path.Verdict = o.kind
					done = append(done, o.path)
				case ActDNAT:
					o.path.DNAT = o.to
					next = append(next, o.path)
				case ActMasquerade:
					o.path.Masquerade = true
					next = append(next, o.path)
				case actError:
					done = append(done, o.path)
				default: // accept, or fell off the end: policy accept
					next = append(next, o.path)
				}
			}
		}
		live = next
	}
	for _, p := range live {
		p.Verdict = ActAccept
		done = append(done, p)
	}
	slices.SortStableFunc(done, func(a, b Path) int { return cmp.Compare(a.String(), b.String()) })
	return done
}

const actError ActionKind = "error"

// outcome is the end of evaluating a chain: a terminal kind, or "" when
// the chain returned (or ended) and the caller continues.
type outcome struct {
	path Path
	kind ActionKind
	to   netip.AddrPort
}

const maxDepth = 64

func (t *Tracer) runChain(name string, pkt Packet, p Path, depth int) []outcome {
	if depth > maxDepth {
		p.Err = "chain depth exceeded at " + name
		return []outcome{{path: p, kind: actError}}
	}
	c, ok := t.Model.Chain(name)
	if !ok {
		p.Err = "no chain " + name
		return []outcome{{path: p, kind: actError}}
	}
	p.Chains = append(slices.Clone(p.Chains), name)
	return t.runRules(c.Rules, 0, pkt, p, depth)
}

func (t *Tracer) runRules(rules []Rule, i int, pkt Packet, p Path, depth int) []outcome {
	for ; i < len(rules); i++ {
		r := rules[i]
		if !t.matchAll(r.Matches, pkt, p) {
			continue
		}
		if out, stop := t.do(r.Action, rules, i, pkt, &p, depth); stop {
			return out
		}
	}
	return []outcome{{path: p}}
}

// do performs an action. It returns stop=false when evaluation continues
// with the next rule (p may have been changed).
func (t *Tracer) do(a Action, rules []Rule, i int, pkt Packet, p *Path, depth int) ([]outcome, bool) {
	switch a.Kind {
	case ActSetMark:
		p.mark |= a.Mark
		return nil, false
	case ActClearMark:
		p.mark &^= a.Mark
		return nil, false
	case ActUpdate:
		p.Updates = append(slices.Clone(p.Updates), SetUpdate{Set: a.Set, Addr: pkt.Src})
		return nil, false
	case ActJump:
		var out []outcome
		for _, o := range t.runChain(a.Chain, pkt, *p, depth+1) {
			if o.kind != "" {
				out = append(out, o)
				continue
			}
			out = append(out, t.runRules(rules, i+1, pkt, o.path, depth)...)
		}
		return out, true
	case ActGoto:
		return t.runChain(a.Chain, pkt, *p, depth+1), true
	case ActReturn:
		return []outcome{{path: *p}}, true
	case ActVmap:
		vm, ok := t.Model.Map(a.Map)
		if !ok {
			p.Err = "no map " + a.Map
			return []outcome{{path: *p, kind: actError}}, true
		}
		if familyOf(pkt.Dst) != a.Family && slices.ContainsFunc(a.Key, isAddrField) {
			return nil, false
		}
		for _, e := range vm.Elements {
			if e.Key.Proto != pkt.Proto || e.Key.Port != pkt.DPort {
				continue
			}
			if slices.Contains(a.Key, FieldDaddr) && e.Key.Addr != pkt.Dst {
				continue
			}
			return t.do(e.Verdict, rules, i, pkt, p, depth)
		}
		return nil, false
	case ActNumgen:
		var out []outcome
		for _, target := range a.Targets {
			out = append(out, t.runChain(target, pkt, *p, depth+1)...)
		}
		return out, true
	case ActReject:
		p.Reject = a.Reject
		return []outcome{{path: *p, kind: ActReject}}, true
	case ActDNAT:
		return []outcome{{path: *p, kind: ActDNAT, to: a.To}}, true
	case ActDNATNumgen:
		var out []outcome
		for _, b := range a.Backends {
			out = append(out, outcome{path: *p, kind: ActDNAT, to: b})
		}
		return out, true
	case ActDNATPick:
		// The kernel looks the packet's own key up with one random index;
		// every index is a path, and a missing one a lookup that fails.
		vm, ok := t.Model.Map(a.Map)
		if !ok || familyOf(pkt.Dst) != a.Family {
			p.Err = fmt.Sprintf("no backend map %s for a packet of family %d", a.Map, familyOf(pkt.Dst))
			return []outcome{{path: *p, kind: actError}}, true
		}
		var out []outcome
		for i := range a.Count {
			k := MapKey{Addr: pkt.Dst, Proto: pkt.Proto, Port: pkt.DPort, Index: uint32(i)}
			j := slices.IndexFunc(vm.Elements, func(e MapElement) bool { return e.Key == k })
			if j < 0 {
				q := *p
				q.Err = fmt.Sprintf("no backend %d in %s", i, a.Map)
				out = append(out, outcome{path: q, kind: actError})
				continue
			}
			out = append(out, outcome{path: *p, kind: ActDNAT, to: vm.Elements[j].To})
		}
		return out, true
	case ActAccept, ActDrop, ActMasquerade:
		return []outcome{{path: *p, kind: a.Kind}}, true
	}
	p.Err = fmt.Sprintf("unknown action %q", a.Kind)
	return []outcome{{path: *p, kind: actError}}, true
}

func isAddrField(f Field) bool { return f == FieldSaddr || f == FieldDaddr }

func (t *Tracer) matchAll(ms []Match, pkt Packet, p Path) bool {
	for _, m := range ms {
		if !t.match(m, pkt, p) {
			return false
		}
	}
	return true
}

func (t *Tracer) match(m Match, pkt Packet, p Path) bool {
	var hit bool
	switch m.Field {
	case FieldSaddr, FieldDaddr:
		addr := pkt.Src
		if m.Field == FieldDaddr {
			addr = pkt.Dst
		}
		if familyOf(addr) != m.Family {
			return false // an ip match never matches an ip6 packet, negated or not
		}
		if m.Set != "" {
			hit = t.inSet(m.Set, addr)
		} else {
			hit = slices.ContainsFunc(m.Prefixes, func(pr netip.Prefix) bool { return pr.Contains(addr) })
		}
	case FieldL4Proto:
		hit = pkt.Proto == m.Proto
	case FieldDport:
		hit = pkt.DPort == m.Port
	case FieldMark:
		hit = p.mark&m.Mark != 0
	case FieldFibDaddrLoc:
		hit = t.isLocal(pkt.Dst)
	case FieldFibSaddrLoc:
		hit = t.isLocal(pkt.Src)
	case FieldNFProto:
		hit = familyOf(pkt.Dst) == m.Family
	case FieldAddrPair:
		if familyOf(pkt.Src) != m.Family {
			return false
		}
		hit = pkt.Src == pkt.Dst && t.inKeySet(m.Set, MapKey{Addr: pkt.Src})
	case FieldServiceKey:
		if familyOf(pkt.Dst) != m.Family {
			return false
		}
		hit = t.inKeySet(m.Set, MapKey{Addr: pkt.Dst, Proto: pkt.Proto, Port: pkt.DPort})
	case FieldNodePortKey:
		hit = t.inKeySet(m.Set, MapKey{Proto: pkt.Proto, Port: pkt.DPort})
	}
	return hit != m.Neg
}

func (t *Tracer) inSet(name string, a netip.Addr) bool {
	if t.dynamic[name][a] {
		return true
	}
	s, ok := t.Model.SetByName(name)
	return ok && slices.Contains(s.Elements, a)
}

// inKeySet looks k up in a plain set of the model; a hairpin pair X . X is keyed by X alone.
func (t *Tracer) inKeySet(name string, k MapKey) bool {
	vm, ok := t.Model.Map(name)
	return ok && slices.ContainsFunc(vm.Elements, func(e MapElement) bool { return e.Key == k })
}

func (t *Tracer) isLocal(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(t.LocalAddrs, a)
}
