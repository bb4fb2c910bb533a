package proxy

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"go.uber.org/zap"
)

// ServiceInput is one Service with its endpoints.
type ServiceInput struct {
	Service   Service
	Endpoints []Endpoint
}

// An InputSource gives one Service's input. The Syncer keeps sources, not
// inputs, and asks again whenever it rebuilds the Service's rules: a source
// over the hub's cache, whose objects are replaced but never changed, costs
// it a few pointers per Service, where a copy of every endpoint would cost
// megabytes at 100,000 of them. A *ServiceInput is its own source.
type InputSource interface {
	Input() ServiceInput
}

// Input returns the input itself.
func (in *ServiceInput) Input() ServiceInput { return *in }

// SyncResult says what a sync did.
type SyncResult struct {
	Full     bool // the tables were compared with the kernel
	Ops      int  // objects sent (Plan.Ops)
	Batches  int  // netlink batches sent
	Services int  // Services rebuilt
}

// Syncer keeps the proxy's tables (see layout.go) equal to its inputs. It
// remembers the digest of what it wrote per table (the ledger), so a change
// to one Service rebuilds and diffs that Service alone and sends only what
// differs, into its shard; an unchanged world sends nothing. It compares
// with the kernel itself when it starts, after any failure and when
// CheckDrift finds that someone else wrote to nftables.
//
// A Syncer is not safe for concurrent use; the proxy's one goroutine owns it.
type Syncer struct {
	app    *Applier
	log    *zap.Logger
	facts  Facts
	inputs map[ServiceKey]InputSource
	// Below, the ledger: nil until a full sync succeeds, and again after
	// any failure, which makes the next sync a full one. It leaves out the
	// hairpin pairs (pairs says which are written), the key sets, which
	// follow from the elements it holds (keysets.go), and the backends
	// (backendSums).
	ledger map[string]*Digest // by table
	// backendSums is, per table, the sum of its backend elements' hashes
	// (backends.go); the ledger holds no backend element.
	backendSums map[string]uint64
	// claims lists, per verdict-map key, the Services whose fragments
	// have it, sorted: the first one's element is written. pairs counts
	// the fragments holding each hairpin pair. What a Service's fragment
	// held is not kept: it is built again from the Service's previous
	// input, which at 100,000 endpoints saves tens of megabytes.
	claims   map[elemKey][]ServiceKey
	pairs    pairCounts
	lastGen  uint32 // nftables generation after our last write
	rejected map[ServiceKey]error
}

// NewSyncer returns a Syncer writing through app.
func NewSyncer(app *Applier, facts Facts, log *zap.Logger) *Syncer {
	return &Syncer{app: app, log: log.Named("proxy"), facts: facts,
		inputs: map[ServiceKey]InputSource{}, rejected: map[ServiceKey]error{}}
}

// FullNext reports whether the next Sync compares every table with the
// kernel: the first one, and the first after a failure or a change of the
// facts.
func (s *Syncer) FullNext() bool { return s.ledger == nil }

// SetFacts changes the node facts; the next Sync rebuilds every Service.
func (s *Syncer) SetFacts(f Facts) {
	if !factsEqual(f, s.facts) {
		s.facts = f
		s.ledger = nil
	}
}

func factsEqual(a, b Facts) bool {
	return a.Node.Name == b.Node.Name && a.Node.Zone == b.Node.Zone &&
		(a.Node.Addresses == nil) == (b.Node.Addresses == nil) && slices.Equal(a.Node.Addresses, b.Node.Addresses) &&
		slices.Equal(a.ClusterCIDRs, b.ClusterCIDRs) && a.MasqueradeAll == b.MasqueradeAll
}

// Len is the number of Services the Syncer holds.
func (s *Syncer) Len() int { return len(s.inputs) }

// Input returns the current input of a Service.
func (s *Syncer) Input(k ServiceKey) (ServiceInput, bool) {
	src, ok := s.inputs[k]
	if !ok {
		return ServiceInput{}, false
	}
	return src.Input(), true
}

// Facts returns the node facts the rules are built for.
func (s *Syncer) Facts() Facts { return s.facts }

// State returns the inputs of the Services keep selects as one State, for
// consumers that look at the whole world but care for few of its Services
// (the conntrack cleaner, the health checks): the endpoints of the others
// are not built.
func (s *Syncer) State(keep func(Service) bool) State {
	st := State{Node: s.facts.Node, ClusterCIDRs: s.facts.ClusterCIDRs, MasqueradeAll: s.facts.MasqueradeAll,
		Endpoints: map[ServiceKey][]Endpoint{}}
	for k, src := range s.inputs {
		if !keep(ServiceOf(src)) {
			continue
		}
		in := src.Input()
		st.Services = append(st.Services, in.Service)
		st.Endpoints[k] = in.Endpoints
	}
	return st
}

// Rejected returns the Services left out because their rules failed, with
// the reason.
func (s *Syncer) Rejected() map[ServiceKey]error { return maps.Clone(s.rejected) }

// Sync takes the sources of the changed Services' inputs (nil: the
// Service is gone) and brings the kernel up to date.
func (s *Syncer) Sync(changed map[ServiceKey]InputSource) (SyncResult, error) {
	before := make(map[ServiceKey]InputSource, len(changed))
	for k := range changed {
		if src, ok := s.inputs[k]; ok && s.rejected[k] == nil {
			before[k] = src
		}
	}
	for k, src := range changed {
		delete(s.rejected, k)
		if src == nil {
			delete(s.inputs, k)
		} else {
			s.inputs[k] = src
		}
	}
	if s.ledger == nil {
		return s.full()
	}
	if len(changed) == 0 {
		return SyncResult{}, nil
	}
	return s.partial(slices.SortedFunc(maps.Keys(changed), compareServiceKeys), before)
}

// CheckDrift finds out whether the tables still hold what was written and
// repairs them with a full sync if not. The nftables generation moves with
// every write by anyone; while it stays where the last sync left it,
// nothing changed and nothing is read. force reads the tables regardless
// (the generation check cannot see a write that raced the Syncer's own).
func (s *Syncer) CheckDrift(force bool) (SyncResult, bool, error) {
	if s.ledger != nil {
		gen, err := s.app.generation()
		if err != nil {
			return SyncResult{}, false, err
		}
		if gen == s.lastGen && !force {
			return SyncResult{}, false, nil
		}
		drift, err := s.app.staleShards()
		if err != nil {
			return SyncResult{}, false, err
		}
		for _, table := range s.tables() {
			have, err := s.app.readKernel(table)
			if err != nil {
				return SyncResult{}, false, err
			}
			want := s.ledger[table]
			if want == nil {
				want = &Digest{}
			}
			var pairSum string
			if table == TableName {
				pairSum = s.pairDrift(&have)
			}
			keySum := keySetDrift(&have)
			var backendSum string
			if takeBackends(&have) != s.backendSums[table] {
				backendSum = "backends differ"
			}
			sums := slices.DeleteFunc([]string{diffSummary(have, *want), pairSum, keySum, backendSum}, func(s string) bool { return s == "" })
			if len(sums) > 0 {
				drift = append(drift, table+": "+strings.Join(sums, ", "))
			}
		}
		if len(drift) == 0 {
			s.lastGen = gen
			return SyncResult{}, false, nil
		}
		s.log.Warn("ruleset drifted from what was written; repairing", zap.Strings("drift", drift))
	}
	res, err := s.full()
	return res, true, err
}

// tables lists the tables the proxy writes.
func (s *Syncer) tables() []string {
	out := []string{TableName}
	for i := range serviceShards {
		out = append(out, shardTable(i))
	}
	return out
}

func compareServiceKeys(a, b ServiceKey) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// fragments builds the fragments of keys, leaving out rejected Services.
func (s *Syncer) fragments(keys []ServiceKey) map[ServiceKey]Fragment {
	out := make(map[ServiceKey]Fragment, len(keys))
	for _, k := range keys {
		out[k] = s.fragment(k)
	}
	return out
}

// fragment builds one Service's fragment; a gone or rejected Service has none.
func (s *Syncer) fragment(k ServiceKey) Fragment {
	src, ok := s.inputs[k]
	if !ok || s.rejected[k] != nil {
		return Fragment{}
	}
	in := src.Input()
	return BuildService(s.facts, in.Service, in.Endpoints)
}

// keptParts bounds what a full sync keeps of its first pass's fragments so
// as not to build them again: counted in chains, rules, rule backends and
// elements, about 50 bytes each. The benchmark's Services (one port, ten
// endpoints) weigh 13 and take about 0.7 KiB, so 70,000 keeps 5,000 of them
// (some 3.5 MB) and a larger world keeps part of itself; the second build it
// saves was a sixth of a 1,000-Service cold sync's CPU.
const keptParts = 70_000

// weight is what keptParts counts of a fragment.
func (f Fragment) weight() int {
	n := len(f.Elements) + len(f.Pairs) + len(f.Sets)
	for _, pb := range f.Backends {
		n += len(pb.To)
	}
	for _, c := range f.Chains {
		n++
		for _, r := range c.Rules {
			n += 1 + len(r.Action.Backends) + len(r.Action.Targets)
		}
	}
	return n
}

// full compares every table with the kernel and sends the differences.
// It goes table by table, building each shard's fragments only while that
// shard is compared, so that a cold start at tens of thousands of Services
// never holds the whole ruleset in memory: a first pass settles the claims
// (and pair counts) from fragments built one at a time; as many of them as
// fit in keptParts are kept for the second pass instead of built twice.
func (s *Syncer) full() (SyncResult, error) {
	s.ledger = nil
	keys := slices.SortedFunc(maps.Keys(s.inputs), compareServiceKeys)
	res := SyncResult{Full: true, Services: len(keys)}
	stale, err := s.app.staleShards()
	if err != nil {
		return res, err
	}
	if err := s.app.dropTables(stale); err != nil {
		return res, err
	}
	res.Ops += len(stale)

	s.claims = map[elemKey][]ServiceKey{}
	s.pairs = newPairCounts()
	byShard := make([][]ServiceKey, serviceShards)
	kept, keptWeight := map[ServiceKey]Fragment{}, 0
	for _, k := range keys {
		fr := s.fragment(k)
		s.count(k, fr, 1)
		if w := fr.weight(); keptWeight+w <= keptParts {
			kept[k], keptWeight = fr, keptWeight+w
		}
		byShard[shardOf(k)] = append(byShard[shardOf(k)], k)
	}

	main, shard := physicalSkeletons(s.facts)
	ledger := map[string]*Digest{}
	sums := map[string]uint64{}
	var pending []*Plan
	pendingOps := 0
	send := func() error {
		n, err := s.app.apply(pending)
		res.Batches += n
		pending, pendingOps = nil, 0
		return err
	}
	for _, table := range s.tables() {
		var m Model
		var won []PortBackends
		if i, ok := shardIndex(table); ok {
			var frs []Fragment
			frs, won = s.winning(byShard[i], kept)
			m = Model{Table: table, Chains: slices.Clone(shard.Chains), Sets: slices.Clone(shard.Sets), Maps: slices.Clone(shard.Maps)}
			m = assemble(m, frs)
		} else {
			m = main
		}
		have, err := s.app.readKernel(table)
		if err != nil {
			return res, err
		}
		var addPairs, delPairs []pairKey
		if table == TableName {
			addPairs, delPairs = s.pairChanges(&have)
		}
		haveBackends := takeBackendElems(&have)
		p := planDiff(table, have, desiredOf(m))
		p.addPairs, p.delPairs = addPairs, delPairs
		var backendSum uint64
		p.addBackends, p.delBackends, backendSum = backendPlan(won, haveBackends)
		// The ledger leaves the key sets out; dropped from the map
		// afterwards, their entries would still size it.
		for i := range m.Maps {
			if isKeySet(m.Maps[i].Name) {
				m.Maps[i].Elements = nil
			}
		}
		d := digestOf(m)
		ledger[table] = &d
		sums[table] = backendSum
		if pendingOps > 0 && pendingOps+p.Ops() > s.app.batchOps {
			if err := send(); err != nil {
				return s.failedFull(res, keys, err)
			}
		}
		res.Ops += p.Ops()
		pending, pendingOps = append(pending, p), pendingOps+p.Ops()
		// A full batch goes at once: held while the next table is built,
		// it would keep two shards' rules in memory at a cold start.
		if pendingOps >= s.app.batchOps {
			if err := send(); err != nil {
				return s.failedFull(res, keys, err)
			}
		}
	}
	if err := send(); err != nil {
		return s.failedFull(res, keys, err)
	}
	s.ledger, s.backendSums = ledger, sums
	s.recordGeneration()
	return res, nil
}

// winning returns the fragments of one shard's Services (keys in order),
// taken out of kept or built now, with the map elements whose claims they
// won, and apart the backends of the Service-map keys they won.
func (s *Syncer) winning(keys []ServiceKey, kept map[ServiceKey]Fragment) ([]Fragment, []PortBackends) {
	out := make([]Fragment, 0, len(keys))
	var backends []PortBackends
	for _, k := range keys {
		fr, ok := kept[k]
		if ok {
			delete(kept, k)
		} else {
			fr = s.fragment(k)
		}
		won := fr.Elements[:0:0]
		for _, e := range fr.Elements {
			if cl := s.claims[elemKey{e.Map, e.Key}]; len(cl) > 0 && cl[0] == k {
				won = append(won, e)
			}
		}
		out = append(out, Fragment{Chains: fr.Chains, Sets: fr.Sets, Elements: won})
		for _, pb := range fr.Backends {
			ek := elemKey{mapServiceIPs(familyOf(pb.Key.Addr)), pb.Key}
			if cl := s.claims[ek]; len(cl) > 0 && cl[0] == k {
				backends = append(backends, pb)
			}
		}
	}
	return out, backends
}

// failedFull handles a full sync whose write failed: Services whose rules
// cannot be expressed are left out and the sync retried without them;
// otherwise the error stands and the next sync is full again.
func (s *Syncer) failedFull(res SyncResult, keys []ServiceKey, err error) (SyncResult, error) {
	if s.rejectBroken(keys) {
		return s.full()
	}
	return res, err
}

// recordGeneration remembers the nftables generation after a write, for
// CheckDrift; if it cannot be read, the next check reads the tables.
func (s *Syncer) recordGeneration() {
	gen, err := s.app.generation()
	if err != nil {
		s.log.Debug("read nftables generation", zap.Error(err))
		gen = 0
	}
	s.lastGen = gen
}

// count adds (n = 1) or removes (n = -1) a fragment's elements to the
// claims and pair counts.
func (s *Syncer) count(k ServiceKey, fr Fragment, n int32) {
	for _, a := range fr.Pairs {
		s.pairs.add(pairKeyOf(a), n)
	}
	for _, e := range fr.Elements {
		ek := elemKey{e.Map, e.Key}
		cl := slices.DeleteFunc(s.claims[ek], func(c ServiceKey) bool { return c == k })
		if n > 0 {
			cl = append(cl, k)
			slices.SortFunc(cl, compareServiceKeys)
		}
		if len(cl) == 0 {
			delete(s.claims, ek)
		} else {
			s.claims[ek] = cl
		}
	}
}

// element returns Service k's element for ek, from its fragment in frags
// or, for a Service that did not change, built again from its input.
func (s *Syncer) element(k ServiceKey, ek elemKey, frags map[ServiceKey]Fragment) (MapElement, bool) {
	fr, ok := frags[k]
	if !ok {
		fr = s.fragment(k)
	}
	for _, e := range fr.Elements {
		if e.Map == ek.Map && e.Key == ek.Key {
			return e.MapElement, true
		}
	}
	return MapElement{}, false
}

// partial rebuilds the given Services only and sends their difference:
// their chains and sets in their shards, and every map key they claimed
// or claim, wherever its winner lives. before holds their previous inputs
// (absent: the Service had no rules).
func (s *Syncer) partial(keys []ServiceKey, before map[ServiceKey]InputSource) (SyncResult, error) {
	frags := s.fragments(keys)
	have := map[string]*Digest{}
	want := map[string]*desired{}
	scope := func(t string) (*Digest, *desired) {
		if have[t] == nil {
			d := newDigest()
			have[t], want[t] = &d, &desired{elems: map[elemKey]MapElement{}}
		}
		return have[t], want[t]
	}
	oldWinner := map[elemKey]ServiceKey{} // per touched verdict-map key; absent: nobody held it
	touched := map[elemKey]bool{}
	oldPairs := map[pairKey]bool{} // per touched pair: whether it was written
	touch := func(e Element) {
		ek := elemKey{e.Map, e.Key}
		if !touched[ek] {
			touched[ek] = true
			if cl := s.claims[ek]; len(cl) > 0 {
				oldWinner[ek] = cl[0]
			}
		}
	}
	oldFrags := make(map[ServiceKey]Fragment, len(keys))
	for _, k := range keys {
		t := shardTable(shardOf(k))
		h, w := scope(t)
		var old Fragment
		if src := before[k]; src != nil {
			in := src.Input()
			old = BuildService(s.facts, in.Service, in.Endpoints)
		}
		oldFrags[k] = Fragment{Backends: old.Backends}
		for _, c := range old.Chains {
			h.Chains[c.Name] = s.ledger[t].Chains[c.Name]
		}
		for _, st := range old.Sets {
			h.Sets[st.Name] = s.ledger[t].Sets[st.Name]
		}
		fr := frags[k]
		w.chains = append(w.chains, fr.Chains...)
		w.sets = append(w.sets, fr.Sets...)
		for _, e := range slices.Concat(old.Elements, fr.Elements) {
			touch(e)
		}
		for _, a := range slices.Concat(old.Pairs, fr.Pairs) {
			pk := pairKeyOf(a)
			if _, seen := oldPairs[pk]; !seen {
				oldPairs[pk] = s.pairs.count(pk) > 0
			}
		}
		s.count(k, old, -1)
		s.count(k, fr, 1)
	}
	// A fragment of a Service that did not change is built again only when
	// a changed Service shares a key with it.
	fragOf := func(k ServiceKey, changed map[ServiceKey]Fragment) Fragment {
		if fr, ok := changed[k]; ok {
			return fr
		}
		return s.fragment(k)
	}
	for ek := range touched {
		if !isServiceIPs(ek.Map) {
			continue
		}
		var old, nu []netip.AddrPort
		var oldT, newT string
		if w0, ok := oldWinner[ek]; ok {
			old, oldT = backendsOf(fragOf(w0, oldFrags), ek.Key), elemTable(ek, w0)
		}
		if cl := s.claims[ek]; len(cl) > 0 {
			nu, newT = backendsOf(fragOf(cl[0], frags), ek.Key), elemTable(ek, cl[0])
		}
		backendChanges(ek.Key, old, oldT, nu, newT, scope)
	}
	for ek := range touched {
		if w0, ok := oldWinner[ek]; ok {
			t := elemTable(ek, w0)
			h, _ := scope(t)
			h.Elems[ek] = s.ledger[t].Elems[ek]
		}
		if cl := s.claims[ek]; len(cl) > 0 {
			e, ok := s.element(cl[0], ek, frags)
			if !ok {
				s.ledger = nil
				return SyncResult{}, fmt.Errorf("internal: %v claims %s %v but does not build it", cl[0], ek.Map, ek.Key)
			}
			_, w := scope(elemTable(ek, cl[0]))
			w.elems[ek] = e
		}
	}
	for t, h := range have {
		keySetChanges(s.ledger[t], h, want[t])
		pickChainChanges(s.ledger[t], h, want[t])
	}
	for pk, was := range oldPairs {
		ek := pk.elemKey()
		h, w := scope(TableName)
		if was {
			h.Elems[ek] = ""
		}
		if s.pairs.count(pk) > 0 {
			w.elems[ek] = MapElement{Key: ek.Key}
		}
	}
	res := SyncResult{Services: len(keys)}
	var plans []*Plan
	for _, t := range slices.Sorted(maps.Keys(have)) {
		p := planDiff(t, *have[t], *want[t])
		res.Ops += p.Ops()
		plans = append(plans, p)
	}
	var err error
	res.Batches, err = s.app.apply(plans)
	if err != nil {
		s.ledger = nil
		if s.rejectBroken(keys) {
			return s.full()
		}
		return res, err
	}
	for t, h := range have {
		for ek, v := range h.Elems {
			if isBackendMap(ek.Map) {
				s.backendSums[t] -= backendHash(ek.Key, v)
			}
		}
		for ek, e := range want[t].elems {
			if isBackendMap(ek.Map) {
				s.backendSums[t] += backendHash(ek.Key, e.value())
			}
		}
		l := s.ledger[t]
		for n := range h.Chains {
			delete(l.Chains, n)
		}
		for n := range h.Sets {
			delete(l.Sets, n)
		}
		for n := range h.Elems {
			delete(l.Elems, n)
		}
	}
	for t, w := range want {
		l := s.ledger[t]
		for _, c := range w.chains {
			l.Chains[c.Name] = chainDigestOf(c)
		}
		for _, st := range w.sets {
			l.Sets[st.Name] = setDigestOf(st)
		}
		for ek, e := range w.elems {
			if !isHairpinSet(ek.Map) && !isKeySet(ek.Map) && !isBackendMap(ek.Map) {
				l.Elems[ek] = e.value()
			}
		}
	}
	if res.Ops > 0 {
		s.recordGeneration()
	}
	return res, nil
}

// rejectBroken looks, after a failed write, for Services whose rules
// cannot be expressed, and leaves them out until their input changes so
// that one bad Service does not hold back the others. It reports whether
// it found any.
func (s *Syncer) rejectBroken(keys []ServiceKey) bool {
	found := false
	for _, k := range keys {
		if err := checkFragment(s.fragment(k)); err != nil {
			s.rejected[k] = err
			s.log.Error("service left out: its rules cannot be written", zap.Stringer("service", k), zap.Error(err))
			found = true
		}
	}
	return found
}

// checkFragment translates a fragment on a connection that is never sent.
func checkFragment(fr Fragment) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	want := desired{chains: fr.Chains, sets: fr.Sets, elems: map[elemKey]MapElement{}}
	for _, e := range fr.Elements {
		want.elems[elemKey{e.Map, e.Key}] = e.MapElement
	}
	for _, a := range fr.Pairs {
		ek := pairKeyOf(a).elemKey()
		want.elems[ek] = MapElement{Key: ek.Key}
	}
	for _, pb := range fr.Backends {
		for _, e := range pb.elements() {
			want.elems[elemKey{e.Map, e.Key}] = e.MapElement
		}
	}
	table := shardTable(0)
	if err := queue(c, &nftables.Table{Family: nftables.TableFamilyINet, Name: table}, planDiff(table, newDigest(), want)); err != nil {
		return fmt.Errorf("translate: %w", err)
	}
	return nil
}

// pickChainChanges settles one table's pick chains in a partial sync. The
// chains are shared by Services and in no fragment: a chain is written when
// an element written goes to it and the table lacks it, and removed when the
// elements taken out went to it and none left in the table or written does.
// ledger, h and w are as for keySetChanges.
func pickChainChanges(ledger *Digest, h *Digest, w *desired) {
	written := map[string]bool{}
	for _, e := range w.elems {
		if c := e.Verdict.Chain; isPickChain(c) && !written[c] {
			written[c] = true
			if _, ok := ledger.Chains[c]; !ok {
				if def, ok := pickChainNamed(c); ok {
					w.chains = append(w.chains, def)
				}
			}
		}
	}
	left := map[string]bool{}
	for _, v := range h.Elems {
		if c, ok := strings.CutPrefix(v, "goto "); ok && isPickChain(c) && !written[c] {
			left[c] = true
		}
	}
	if len(left) == 0 {
		return
	}
	for ek, v := range ledger.Elems {
		if _, out := h.Elems[ek]; out {
			continue
		}
		if c, ok := strings.CutPrefix(v, "goto "); ok {
			delete(left, c)
		}
	}
	for c := range left {
		if d, ok := ledger.Chains[c]; ok {
			h.Chains[c] = d
		}
	}
}
