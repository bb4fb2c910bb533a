package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"

	"github.com/nodenet/nodenet/internal/nftbatch"
)

// maxBatchOps bounds one netlink batch of a split plan. The kernel holds
// the nftables commit lock while it processes a batch, so a cold start at
// tens of thousands of Services goes in several batches and other nftables
// users (the routing package, the runtime's hostPort rules) are not kept
// waiting for seconds. Small batches also cost the kernel less in all: to
// look up and bind each anonymous set (one per chained Service port's DNAT
// map) it walks the whole batch's transaction list. And a batch's messages are held
// in memory until it is sent: at 10,000 Services a cold start peaked about
// 5 MB lower at 1,000 objects a batch than at 2,000 (when the kernel's
// answers to every message were held too), for the same CPU time.
const maxBatchOps = 1000

// Applier writes plans into the kernel: layer 3. It shares table
// TableName with the routing package and never touches objects that are
// not the proxy's (ownedName), in particular the pod-masquerade chain; it
// never deletes or flushes the table.
type Applier struct {
	netnsFD  int // 0: the calling thread's namespace
	batchOps int
}

// NewApplier returns an Applier writing into the network namespace open as
// netnsFD (0 for the current one).
func NewApplier(netnsFD int) *Applier {
	return &Applier{netnsFD: netnsFD, batchOps: maxBatchOps}
}

// newReader returns a connection for a run of reads, with one socket for all
// of them; the caller closes it with CloseLasting. Without, each read opens a
// socket of its own, entering the node's namespace to do so: reading the 17
// tables of an empty skeleton, as a full sync after a restart or a forced
// drift check does, took 44–51 ms that way, and 21 ms with one socket.
// (Writes go through nftbatch.)
func (a *Applier) newReader() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(nftbatch.LargeReceiveBuffer)}
	if a.netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(a.netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nft conn: %w", err)
	}
	return c, nil
}

// Apply makes the proxy's part of table m.Table equal to m, whatever is
// there now: a full sync of one table. Objects already as m wants them are
// left alone, so applying the same model twice sends nothing the second
// time.
func (a *Applier) Apply(m Model) error {
	if m.Table == "" {
		return errors.New("apply: model without table")
	}
	have, err := a.readKernel(m.Table)
	if err != nil {
		return err
	}
	_, err = a.apply([]*Plan{planDiff(m.Table, have, desiredOf(m))})
	return err
}

// apply sends the plans, one per table, in one batch when they are small:
// the kernel then moves every table at once or none. A larger set of plans
// (a cold start) goes table by table, each split by applyLarge. It returns
// the number of batches sent.
func (a *Applier) apply(plans []*Plan) (int, error) {
	var todo []*Plan
	total, recreates := 0, false
	for _, p := range plans {
		if p.Empty() {
			continue
		}
		todo = append(todo, p)
		total += p.Ops()
		recreates = recreates || len(p.delMaps) > 0 || len(p.delSets) > 0
	}
	if len(todo) == 0 {
		return 0, nil
	}
	if total <= a.batchOps || recreates {
		return 1, a.send(todo...)
	}
	sent := 0
	for _, p := range todo {
		n, err := a.applyLarge(p)
		sent += n
		if err != nil {
			return sent, fmt.Errorf("table %s: %w", p.table, err)
		}
	}
	return sent, nil
}

// applyLarge splits a plan that only adds (a cold start) and is larger
// than one batch: chains first, then their rules, then the map elements
// that make them reachable, so that each batch refers only to objects that
// exist. Removals and rewrites go in one last batch, atomically.
func (a *Applier) applyLarge(p *Plan) (int, error) {
	if p.Ops() <= a.batchOps {
		return 1, a.send(p)
	}
	var batches []*Plan
	cur := &Plan{table: p.table}
	size := 0
	next := func(n int) {
		if size+n > a.batchOps && size > 0 {
			batches = append(batches, cur)
			cur, size = &Plan{table: p.table}, 0
		}
		size += n
	}
	// Maps and sets are few; they lead the first batch.
	cur.addMaps, cur.addSets = p.addMaps, p.addSets
	size = len(p.addMaps) + len(p.addSets)
	for _, c := range p.addChains {
		next(1)
		cur.addChains = append(cur.addChains, c)
	}
	isNew := map[string]bool{}
	for _, c := range p.addChains {
		isNew[c.Name] = true
	}
	var rewrite []Chain
	for _, c := range p.fill {
		if !isNew[c.Name] {
			rewrite = append(rewrite, c)
			continue
		}
		next(len(c.Rules))
		cur.fill = append(cur.fill, c)
	}
	// Backends before the Service-map elements that lead to them; one
	// whose value changes goes with its deletion, in the last batch (the
	// kernel refuses a key it holds with another value).
	rewritten := map[MapKey]bool{}
	for _, b := range p.delBackends {
		rewritten[b.key] = true
	}
	var rewriteBackends []backendElem
	for _, b := range p.addBackends {
		if rewritten[b.key] {
			rewriteBackends = append(rewriteBackends, b)
			continue
		}
		next(1)
		cur.addBackends = append(cur.addBackends, b)
	}
	deleted := map[elemKey]bool{}
	for _, k := range p.delElems {
		deleted[k] = true
	}
	var replace []Element
	for _, e := range p.addElems {
		if deleted[elemKey{e.Map, e.Key}] {
			replace = append(replace, e)
			continue
		}
		next(1)
		cur.addElems = append(cur.addElems, e)
	}
	for _, pk := range p.addPairs {
		next(1)
		cur.addPairs = append(cur.addPairs, pk)
	}
	batches = append(batches, cur, &Plan{table: p.table,
		delElems: p.delElems, delSetEls: p.delSetEls, flush: p.flush, fill: rewrite,
		addElems: replace, addSetEls: p.addSetEls, delChains: p.delChains, delPairs: p.delPairs,
		delBackends: p.delBackends, addBackends: rewriteBackends,
	})
	sent := 0
	for i, b := range batches {
		if b.Empty() {
			continue
		}
		if err := a.send(b); err != nil {
			return sent, fmt.Errorf("batch %d of %d: %w", i+1, len(batches), err)
		}
		sent++
	}
	return sent, nil
}

// dropTables deletes whole tables, in one batch.
func (a *Applier) dropTables(names []string) error {
	if len(names) == 0 {
		return nil
	}
	b, err := nftbatch.New()
	if err != nil {
		return err
	}
	for _, n := range names {
		b.Conn.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: n})
	}
	if err := b.Send(a.netnsFD); err != nil {
		return fmt.Errorf("delete tables %v: %w", names, err)
	}
	return nil
}

// send queues plans and writes them as one batch.
func (a *Applier) send(plans ...*Plan) error {
	b, err := nftbatch.New()
	if err != nil {
		return err
	}
	b.SetUserData(setUserData)
	var tables []string
	for _, p := range plans {
		tables = append(tables, p.table)
		if err := queue(b.Conn, &nftables.Table{Family: nftables.TableFamilyINet, Name: p.table}, p); err != nil {
			return err // the half-queued batch goes with b, unsent
		}
	}
	if err := b.Send(a.netnsFD); err != nil {
		return fmt.Errorf("write tables %s: %w", strings.Join(tables, ", "), err)
	}
	return nil
}

// queue translates p and queues it in the order the kernel needs within
// one batch: creations before references, deletions after the last one.
// It fails, naming the object, on anything it cannot express.
func queue(c *nftables.Conn, t *nftables.Table, p *Plan) error {
	for _, names := range [][]string{p.flush, p.delChains, p.delSets, p.delMaps} {
		for _, n := range names {
			if !ownedIn(t.Name, n) {
				return fmt.Errorf("%s is not the proxy's", n)
			}
		}
	}
	for _, ch := range p.addChains {
		if !ownedIn(t.Name, ch.Name) {
			return fmt.Errorf("chain %s is not the proxy's", ch.Name)
		}
	}
	c.AddTable(t) // NLM_F_CREATE without EXCL: keeps an existing table
	chains := map[string]*nftables.Chain{}
	chainRef := func(name string) *nftables.Chain {
		if ch, ok := chains[name]; ok {
			return ch
		}
		return &nftables.Chain{Table: t, Name: name}
	}
	for _, ch := range p.addChains {
		nc, err := buildChain(t, ch)
		if err != nil {
			return err
		}
		chains[ch.Name] = c.AddChain(nc)
	}
	if err := elements(c, t, p.delElems, nil, true); err != nil {
		return err
	}
	if err := pairElements(c, t, p.delPairs, true); err != nil {
		return err
	}
	if err := elements(c, t, backendKeys(p.delBackends), nil, true); err != nil {
		return err
	}
	for name, addrs := range p.delSetEls {
		if err := setElements(c, t, name, addrs, true); err != nil {
			return err
		}
	}
	for _, n := range p.flush {
		c.FlushChain(chainRef(n))
	}
	for _, n := range slices.Concat(p.delSets, p.delMaps) {
		c.DelSet(&nftables.Set{Table: t, Name: n})
	}
	for _, vm := range p.addMaps {
		ns, err := buildMap(t, vm)
		if err != nil {
			return err
		}
		if err := c.AddSet(ns.set, nil); err != nil {
			return fmt.Errorf("add map %s: %w", vm.Name, err)
		}
	}
	for _, s := range p.addSets {
		ns, err := buildSet(t, s)
		if err != nil {
			return err
		}
		if err := addSet(c, ns.set, ns.elems); err != nil {
			return fmt.Errorf("add set %s: %w", s.Name, err)
		}
	}
	tr := &translator{table: t}
	var rules []*nftables.Rule
	for _, ch := range p.fill {
		for i, r := range ch.Rules {
			exprs, err := tr.ruleExprs(r)
			if err != nil {
				return fmt.Errorf("chain %s rule %d (%s): %w", ch.Name, i, r, err)
			}
			rules = append(rules, &nftables.Rule{Table: t, Chain: chainRef(ch.Name), Exprs: exprs, UserData: ruleUserData(r)})
		}
	}
	// Anonymous sets go in after the named ones and before the rules that
	// use them.
	for _, s := range tr.anon {
		if err := addSet(c, s.set, s.elems); err != nil {
			return fmt.Errorf("add anonymous set: %w", err)
		}
	}
	for _, r := range rules {
		c.AddRule(r)
	}
	if err := elements(c, t, nil, backendAdds(p.addBackends), false); err != nil {
		return err
	}
	if err := elements(c, t, nil, p.addElems, false); err != nil {
		return err
	}
	if err := pairElements(c, t, p.addPairs, false); err != nil {
		return err
	}
	for name, addrs := range p.addSetEls {
		if err := setElements(c, t, name, addrs, false); err != nil {
			return err
		}
	}
	for _, n := range p.delChains {
		c.DelChain(chainRef(n))
	}
	return nil
}

// elements deletes the keys dels or adds the elements adds, grouped per map.
func elements(c *nftables.Conn, t *nftables.Table, dels []elemKey, adds []Element, del bool) error {
	byMap := map[string][]nftables.SetElement{}
	var order []string
	put := func(m string, e nftables.SetElement) {
		if _, ok := byMap[m]; !ok {
			order = append(order, m)
		}
		byMap[m] = append(byMap[m], e)
	}
	for _, k := range dels {
		def, ok := mapDefs[k.Map]
		if !ok {
			return fmt.Errorf("map %s is not the proxy's", k.Map)
		}
		key, err := mapKeyBytes(def.Family, def.Key, k.Key)
		if err != nil {
			return fmt.Errorf("map %s key %v: %w", k.Map, k.Key, err)
		}
		put(k.Map, nftables.SetElement{Key: key})
	}
	for _, e := range adds {
		def, ok := mapDefs[e.Map]
		if !ok {
			return fmt.Errorf("map %s is not the proxy's", e.Map)
		}
		el, err := setElement(def, e.MapElement)
		if err != nil {
			return fmt.Errorf("map %s key %v: %w", e.Map, e.Key, err)
		}
		put(e.Map, el)
	}
	for _, m := range order {
		ns, err := buildMap(t, mapDefs[m])
		if err != nil {
			return err
		}
		if err := setElems(c, ns.set, byMap[m], del); err != nil {
			return fmt.Errorf("map %s elements: %w", m, err)
		}
	}
	return nil
}

// setElements adds or deletes addresses of a static address set.
func setElements(c *nftables.Conn, t *nftables.Table, name string, addrs []string, del bool) error {
	var els []nftables.SetElement
	var f Family
	for _, s := range addrs {
		ad, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		f = familyOf(ad)
		els = append(els, nftables.SetElement{Key: ad.AsSlice()})
	}
	if len(els) == 0 {
		return nil
	}
	s := &nftables.Set{Table: t, Name: name, KeyType: addrSetType(f)}
	if err := setElems(c, s, els, del); err != nil {
		return fmt.Errorf("set %s elements: %w", name, err)
	}
	return nil
}

// elemsPerMessage keeps one message's element list, a netlink attribute
// with a 16-bit length, well below 64 KiB: an element with a long comment
// and verdict chain takes about 300 bytes.
const elemsPerMessage = 128

// addSet creates a set and queues its elements in as many messages as
// they need. Elements may be added to an anonymous set until a rule binds
// it, later in the same batch.
func addSet(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	if err := c.AddSet(s, nil); err != nil {
		return err
	}
	named := *s // google/nftables refuses element updates of anonymous sets
	named.Anonymous = false
	return setElems(c, &named, elems, false)
}

// setElems queues element additions or deletions in bounded messages.
func setElems(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement, del bool) error {
	for chunk := range slices.Chunk(elems, elemsPerMessage) {
		var err error
		if del {
			err = c.SetDeleteElements(s, chunk)
		} else {
			err = c.SetAddElements(s, chunk)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
