package proxy

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/google/nftables"
	"go.uber.org/zap"
)

// ServiceInput is one Service with its endpoints.
type ServiceInput struct {
	Service   Service
	Endpoints []Endpoint
}

// SyncResult says what a sync did.
type SyncResult struct {
	Full     bool // the whole table was compared with the kernel
	Ops      int  // objects sent (Plan.Ops)
	Batches  int  // netlink batches sent
	Services int  // Services rebuilt
}

// Syncer keeps the proxy's part of the table equal to its inputs. It
// remembers the digest of what it wrote (the ledger), so a change to one
// Service rebuilds and diffs that Service alone and sends only what
// differs; an unchanged world sends nothing. It compares with the kernel
// itself when it starts, after any failure and on CheckDrift.
//
// A Syncer is not safe for concurrent use; the proxy's one goroutine owns it.
type Syncer struct {
	app    *Applier
	log    *zap.Logger
	facts  Facts
	inputs map[ServiceKey]ServiceInput
	// Below, the ledger: nil until a full sync succeeds, and again after
	// any failure, which makes the next sync a full one.
	ledger   *Digest
	owned    map[ServiceKey]ownership
	claims   map[elemKey][]claim
	rejected map[ServiceKey]error // inputs the kernel cannot take, until they change
}

// ownership is what one Service's fragment put into the ledger.
type ownership struct {
	chains, sets []string
	elems        []elemKey
}

// claim is a Service's wish for one map key; the lowest ServiceKey wins.
type claim struct {
	svc  ServiceKey
	elem MapElement
}

// NewSyncer returns a Syncer writing through app.
func NewSyncer(app *Applier, facts Facts, log *zap.Logger) *Syncer {
	return &Syncer{app: app, log: log.Named("proxy"), facts: facts,
		inputs: map[ServiceKey]ServiceInput{}, rejected: map[ServiceKey]error{}}
}

// SetFacts changes the node facts; the next Sync rebuilds every Service.
func (s *Syncer) SetFacts(f Facts) {
	if !factsEqual(f, s.facts) {
		s.facts = f
		s.ledger = nil
	}
}

func factsEqual(a, b Facts) bool {
	return a.Node.Name == b.Node.Name && a.Node.Zone == b.Node.Zone &&
		slices.Equal(a.Node.Addresses, b.Node.Addresses) &&
		slices.Equal(a.ClusterCIDRs, b.ClusterCIDRs) && a.MasqueradeAll == b.MasqueradeAll
}

// Input returns the current input of a Service.
func (s *Syncer) Input(k ServiceKey) (ServiceInput, bool) {
	in, ok := s.inputs[k]
	return in, ok
}

// State returns every input as one State, for consumers that look at the
// whole world (the conntrack cleaner).
func (s *Syncer) State() State {
	st := State{Node: s.facts.Node, ClusterCIDRs: s.facts.ClusterCIDRs, MasqueradeAll: s.facts.MasqueradeAll,
		Endpoints: make(map[ServiceKey][]Endpoint, len(s.inputs))}
	for k, in := range s.inputs {
		st.Services = append(st.Services, in.Service)
		st.Endpoints[k] = in.Endpoints
	}
	return st
}

// Rejected returns the Services left out because their rules failed, with
// the reason.
func (s *Syncer) Rejected() map[ServiceKey]error { return maps.Clone(s.rejected) }

// Sync takes new inputs for the changed Services (nil: the Service is
// gone) and brings the kernel up to date.
func (s *Syncer) Sync(changed map[ServiceKey]*ServiceInput) (SyncResult, error) {
	for k, in := range changed {
		delete(s.rejected, k)
		if in == nil {
			delete(s.inputs, k)
		} else {
			s.inputs[k] = *in
		}
	}
	if s.ledger == nil {
		return s.full()
	}
	if len(changed) == 0 {
		return SyncResult{}, nil
	}
	return s.partial(slices.SortedFunc(maps.Keys(changed), compareServiceKeys))
}

// CheckDrift reads the kernel and, if anything differs from the ledger
// (someone flushed a chain, deleted an element, or a failure left the
// ledger unknown), repairs it with a full sync.
func (s *Syncer) CheckDrift() (SyncResult, bool, error) {
	if s.ledger != nil {
		have, err := s.app.readKernel(TableName)
		if err != nil {
			return SyncResult{}, false, err
		}
		if sum := diffSummary(have, *s.ledger); sum == "" {
			return SyncResult{}, false, nil
		} else {
			s.log.Warn("ruleset drifted from what was written; repairing", zap.String("drift", sum))
		}
	}
	res, err := s.full()
	return res, true, err
}

func compareServiceKeys(a, b ServiceKey) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// fragments builds the fragments of keys, leaving out rejected Services.
func (s *Syncer) fragments(keys []ServiceKey) map[ServiceKey]Fragment {
	out := make(map[ServiceKey]Fragment, len(keys))
	for _, k := range keys {
		in, ok := s.inputs[k]
		if !ok || s.rejected[k] != nil {
			out[k] = Fragment{}
			continue
		}
		out[k] = BuildService(s.facts, in.Service, in.Endpoints)
	}
	return out
}

// full compares the whole table with the kernel and sends the difference.
func (s *Syncer) full() (SyncResult, error) {
	s.ledger = nil
	keys := slices.SortedFunc(maps.Keys(s.inputs), compareServiceKeys)
	frags := s.fragments(keys)
	m := s.assemble(keys, frags)
	have, err := s.app.readKernel(TableName)
	if err != nil {
		return SyncResult{Full: true}, err
	}
	p := planDiff(have, desiredOf(m))
	res := SyncResult{Full: true, Ops: p.Ops(), Services: len(keys)}
	res.Batches, err = s.app.apply(TableName, p)
	if err != nil {
		if s.rejectBroken(keys, frags) {
			return s.full()
		}
		return res, err
	}
	d := digestOf(m)
	s.ledger = &d
	s.owned = map[ServiceKey]ownership{}
	s.claims = map[elemKey][]claim{}
	for _, k := range keys {
		s.own(k, frags[k])
	}
	return res, nil
}

func (s *Syncer) assemble(keys []ServiceKey, frags map[ServiceKey]Fragment) Model {
	ordered := make([]Fragment, 0, len(keys))
	for _, k := range keys {
		ordered = append(ordered, frags[k])
	}
	return assemble(Skeleton(s.facts), ordered)
}

// own records a fragment in the ownership index and its claims.
func (s *Syncer) own(k ServiceKey, fr Fragment) {
	var o ownership
	for _, c := range fr.Chains {
		o.chains = append(o.chains, c.Name)
	}
	for _, st := range fr.Sets {
		o.sets = append(o.sets, st.Name)
	}
	for _, e := range fr.Elements {
		ek := elemKey{e.Map, e.Key}
		o.elems = append(o.elems, ek)
		cl := append(s.claims[ek], claim{k, e.MapElement})
		slices.SortFunc(cl, func(a, b claim) int { return compareServiceKeys(a.svc, b.svc) })
		s.claims[ek] = cl
	}
	if len(o.chains)+len(o.sets)+len(o.elems) == 0 {
		delete(s.owned, k)
		return
	}
	s.owned[k] = o
}

// disown removes a Service's claims and returns what it owned.
func (s *Syncer) disown(k ServiceKey) ownership {
	o := s.owned[k]
	for _, ek := range o.elems {
		cl := slices.DeleteFunc(s.claims[ek], func(c claim) bool { return c.svc == k })
		if len(cl) == 0 {
			delete(s.claims, ek)
		} else {
			s.claims[ek] = cl
		}
	}
	delete(s.owned, k)
	return o
}

// partial rebuilds the given Services only and sends their difference.
func (s *Syncer) partial(keys []ServiceKey) (SyncResult, error) {
	frags := s.fragments(keys)
	have := newDigest()
	want := desired{elems: map[elemKey]MapElement{}}
	touched := map[elemKey]bool{}
	for _, k := range keys {
		old := s.disown(k)
		for _, n := range old.chains {
			have.Chains[n] = s.ledger.Chains[n]
		}
		for _, n := range old.sets {
			have.Sets[n] = s.ledger.Sets[n]
		}
		for _, ek := range old.elems {
			touched[ek] = true
		}
		fr := frags[k]
		want.chains = append(want.chains, fr.Chains...)
		want.sets = append(want.sets, fr.Sets...)
		for _, e := range fr.Elements {
			touched[elemKey{e.Map, e.Key}] = true
		}
		s.own(k, fr)
	}
	for ek := range touched {
		if v, ok := s.ledger.Elems[ek]; ok {
			have.Elems[ek] = v
		}
		if cl := s.claims[ek]; len(cl) > 0 {
			want.elems[ek] = cl[0].elem
		}
	}
	p := planDiff(have, want)
	res := SyncResult{Ops: p.Ops(), Services: len(keys)}
	var err error
	res.Batches, err = s.app.apply(TableName, p)
	if err != nil {
		s.ledger = nil
		if s.rejectBroken(keys, frags) {
			return s.full()
		}
		return res, err
	}
	for n := range have.Chains {
		delete(s.ledger.Chains, n)
	}
	for n := range have.Sets {
		delete(s.ledger.Sets, n)
	}
	for _, c := range want.chains {
		s.ledger.Chains[c.Name] = chainDigestOf(c)
	}
	for _, st := range want.sets {
		s.ledger.Sets[st.Name] = setDigestOf(st)
	}
	for ek := range touched {
		if e, ok := want.elems[ek]; ok {
			s.ledger.Elems[ek] = e.Verdict.render()
		} else {
			delete(s.ledger.Elems, ek)
		}
	}
	return res, nil
}

// rejectBroken looks, after a failed write, for Services whose rules
// cannot be expressed, and leaves them out until their input changes so
// that one bad Service does not hold back the others. It reports whether
// it found any.
func (s *Syncer) rejectBroken(keys []ServiceKey, frags map[ServiceKey]Fragment) bool {
	found := false
	for _, k := range keys {
		if err := checkFragment(frags[k]); err != nil {
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
	if err := queue(c, &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}, planDiff(newDigest(), want)); err != nil {
		return fmt.Errorf("translate: %w", err)
	}
	return nil
}
