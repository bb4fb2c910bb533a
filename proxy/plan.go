package proxy

import (
	"cmp"
	"slices"
	"strings"
)

// desired is the wanted state of one scope of the table: the whole proxy
// part of it, or one Service's fragment. Objects outside the scope are
// neither compared nor touched.
type desired struct {
	chains []Chain
	sets   []Set
	maps   []VerdictMap // definitions; their elements are in elems
	elems  map[elemKey]MapElement
}

func desiredOf(m Model) desired {
	d := desired{chains: m.Chains, sets: m.Sets, elems: map[elemKey]MapElement{}}
	for _, vm := range m.Maps {
		d.maps = append(d.maps, VerdictMap{Name: vm.Name, Family: vm.Family, Key: vm.Key, Plain: vm.Plain, Backends: vm.Backends})
		for _, e := range vm.Elements {
			d.elems[elemKey{vm.Name, e.Key}] = e
		}
	}
	return d
}

// Plan is the list of changes that takes the kernel from one digest to
// another, grouped in the order the kernel accepts them in one batch:
// objects are created before anything refers to them and deleted after
// the last reference is gone.
type Plan struct {
	table     string
	addMaps   []VerdictMap
	addSets   []Set // new sets, and sets re-created with another definition
	addChains []Chain
	delElems  []elemKey
	delSetEls map[string][]string // static set → addresses to remove
	flush     []string            // chains to rewrite or delete
	delSets   []string            // removed sets, and sets re-created
	fill      []Chain             // chains whose rules are written
	addElems  []Element
	addSetEls map[string][]string
	delChains []string
	delMaps   []string
	// Hairpin pairs to add and delete, in table TableName: a full sync
	// sends them outside addElems and delElems (pairChanges).
	addPairs, delPairs []pairKey
	// Backend elements to add and delete: a full sync sends them outside
	// addElems and delElems too (backendPlan).
	addBackends, delBackends []backendElem
}

// Ops counts the objects the plan sends: each chain, set, map, rule and
// element created, changed or deleted.
func (p *Plan) Ops() int {
	n := len(p.addMaps) + len(p.addSets) + len(p.addChains) + len(p.delElems) + len(p.flush) +
		len(p.delSets) + len(p.addElems) + len(p.delChains) + len(p.delMaps) + len(p.addPairs) + len(p.delPairs) +
		len(p.addBackends) + len(p.delBackends)
	for _, c := range p.fill {
		n += len(c.Rules)
	}
	for _, s := range p.addSets {
		n += len(s.Elements)
	}
	for _, els := range p.delSetEls {
		n += len(els)
	}
	for _, els := range p.addSetEls {
		n += len(els)
	}
	return n
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return p.Ops() == 0 }

// planDiff compares have, the digest of a scope of table, with want, the
// same scope as it should be.
func planDiff(table string, have Digest, want desired) *Plan {
	p := &Plan{table: table, delSetEls: map[string][]string{}, addSetEls: map[string][]string{}}

	wantMaps := map[string]bool{}
	for _, vm := range want.maps {
		wantMaps[vm.Name] = true
		if def, ok := have.Maps[vm.Name]; !ok || def != mapDef(vm) {
			if ok {
				// Another key type: the map goes and comes back empty, so
				// every element of it is written again below.
				p.delMaps = append(p.delMaps, vm.Name)
			}
			p.addMaps = append(p.addMaps, vm)
		}
	}
	replacedMap := map[string]bool{}
	recreated := map[string]bool{} // sets and maps whose users must be rewritten
	for _, n := range p.delMaps {
		replacedMap[n] = true
		recreated[n] = true
	}
	for n := range have.Maps {
		if !wantMaps[n] {
			p.delMaps = append(p.delMaps, n)
			replacedMap[n] = true
		}
	}

	// Sets. A set re-created (another type or timeout) must first lose
	// every rule that refers to it, so the chains using it are rewritten.
	wantSets := map[string]bool{}
	for _, s := range want.sets {
		wantSets[s.Name] = true
		sd := setDigestOf(s)
		h, ok := have.Sets[s.Name]
		switch {
		case !ok:
			p.addSets = append(p.addSets, s)
		case h.Def != sd.Def:
			recreated[s.Name] = true
			p.delSets = append(p.delSets, s.Name)
			p.addSets = append(p.addSets, s)
		case h.Elems != sd.Elems:
			del, add := listDiff(h.Elems, sd.Elems)
			if len(del) > 0 {
				p.delSetEls[s.Name] = del
			}
			if len(add) > 0 {
				p.addSetEls[s.Name] = add
			}
		}
	}
	for n := range have.Sets {
		if !wantSets[n] {
			p.delSets = append(p.delSets, n)
			recreated[n] = true // every rule using it goes first
		}
	}

	wantChains := map[string]bool{}
	for _, c := range want.chains {
		wantChains[c.Name] = true
		h, ok := have.Chains[c.Name]
		switch {
		case !ok:
			p.addChains = append(p.addChains, c)
			p.fill = append(p.fill, c)
		case h.Hook != hookString(c.Base):
			// A base chain's hook cannot be changed in place.
			p.flush = append(p.flush, c.Name)
			p.delChains = append(p.delChains, c.Name)
			p.addChains = append(p.addChains, c)
			p.fill = append(p.fill, c)
		case !slices.Equal(h.Rules, chainDigestOf(c).Rules) || usesAny(c, recreated):
			p.flush = append(p.flush, c.Name)
			p.fill = append(p.fill, c)
		}
	}
	for n := range have.Chains {
		if !wantChains[n] {
			p.flush = append(p.flush, n)
			p.delChains = append(p.delChains, n)
		}
	}

	for k, v := range have.Elems {
		w, ok := want.elems[k]
		if replacedMap[k.Map] {
			continue // the map is deleted, its elements with it
		}
		if !ok || w.value() != v {
			p.delElems = append(p.delElems, k)
		}
	}
	for k, w := range want.elems {
		if v, ok := have.Elems[k]; ok && v == w.value() && !replacedMap[k.Map] {
			continue
		}
		p.addElems = append(p.addElems, Element{Map: k.Map, MapElement: w})
	}
	p.sort()
	return p
}

// sort makes plans deterministic, for tests and for readable logs.
func (p *Plan) sort() {
	byName := func(a, b Chain) int { return cmp.Compare(a.Name, b.Name) }
	slices.SortFunc(p.addChains, byName)
	slices.SortFunc(p.fill, byName)
	slices.SortFunc(p.addSets, func(a, b Set) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(p.addMaps, func(a, b VerdictMap) int { return cmp.Compare(a.Name, b.Name) })
	keyOrder := func(a, b elemKey) int { return cmp.Or(cmp.Compare(a.Map, b.Map), compareKeys(a.Key, b.Key)) }
	slices.SortFunc(p.delElems, keyOrder)
	slices.SortFunc(p.addElems, func(a, b Element) int { return keyOrder(elemKey{a.Map, a.Key}, elemKey{b.Map, b.Key}) })
	for _, s := range [][]string{p.flush, p.delSets, p.delChains, p.delMaps} {
		slices.Sort(s)
	}
}

// usesAny reports whether a rule of c refers to one of the named sets or
// maps.
func usesAny(c Chain, sets map[string]bool) bool {
	if len(sets) == 0 {
		return false
	}
	for _, r := range c.Rules {
		if sets[r.Action.Set] || sets[r.Action.Map] {
			return true
		}
		for _, m := range r.Matches {
			if sets[m.Set] {
				return true
			}
		}
	}
	return false
}

// listDiff compares two comma-separated sorted lists.
func listDiff(have, want string) (del, add []string) {
	split := func(s string) map[string]bool {
		out := map[string]bool{}
		for len(s) > 0 {
			var item string
			item, s, _ = strings.Cut(s, ",")
			out[item] = true
		}
		return out
	}
	h, w := split(have), split(want)
	for x := range h {
		if !w[x] {
			del = append(del, x)
		}
	}
	for x := range w {
		if !h[x] {
			add = append(add, x)
		}
	}
	slices.Sort(del)
	slices.Sort(add)
	return del, add
}
