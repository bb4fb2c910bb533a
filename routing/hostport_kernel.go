package routing

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nftbatch"
)

// HostPortsConfig configures HostPorts.
type HostPortsConfig struct {
	// NetnsFD is an open descriptor of the node's network namespace, where the rules, the
	// conntrack table and the node's addresses are; 0 means the namespace of the calling thread.
	NetnsFD int
	// Relay serves the mappings on a loopback hostIP, with its sockets in the same namespace.
	// Without it such mappings are refused as invalid.
	Relay Relay
}

// HostPorts owns the pods' hostPort mappings: DNAT from a port of the node to a port of a pod, as
// the CNI portmap plugin does, in nodenet's table inet nodenet (chains, maps and sets named
// hostport-*). The mappings live in the kernel only, each map element carrying its owner
// (container ID and interface) in its comment: a restarted daemon reads them back and keeps them,
// without a moment in which they are missing. Mappings on a loopback hostIP are the exception:
// they are recorded in the relay maps, which no rule reads, and served by the Relay's sockets,
// which a restarted daemon opens again from that record (the connections they relayed are cut).
// All methods may be called concurrently; they are serialised on one lock, and a call with
// nothing to change sends nothing to the kernel.
type HostPorts struct {
	netnsFD    int
	relay      Relay
	log        *zap.Logger
	dialCT     func() (conntrackTable, error)
	localAddrs func() ([]netip.Addr, error)

	mu sync.Mutex
	// loaded says owners holds what the kernel holds (read on first use, then kept by every
	// write); ready says the chains, maps and sets were found or made as they should be.
	loaded, ready bool
	owners        map[string][]hostPortEntry // by Attachment.key, sorted
}

// NewHostPorts returns a HostPorts for the node's namespace. It touches nothing yet.
func NewHostPorts(cfg HostPortsConfig, log *zap.Logger) *HostPorts {
	if log == nil {
		log = zap.NewNop()
	}
	fd := cfg.NetnsFD
	return &HostPorts{
		netnsFD:    fd,
		relay:      cfg.Relay,
		log:        log.Named("hostport"),
		dialCT:     func() (conntrackTable, error) { return dialConntrack(fd) },
		localAddrs: func() ([]netip.Addr, error) { return nodeAddrs(fd) },
		owners:     map[string][]hostPortEntry{},
	}
}

// conn returns a connection of its own for one read or one transaction. It opens a socket only
// when used, and a transaction that fails while being queued goes with it, unsent.
func (h *HostPorts) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if h.netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(h.netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables conn: %w", err)
	}
	return c, nil
}

// Map makes the hostPort mappings of one pod interface exactly mappings: new ones are added,
// ones no longer asked for removed, in one transaction. A mapping that overlaps another pod's
// fails with *PortConflictError, one that cannot be honoured with *InvalidPortMappingError; both
// leave everything as it was.
func (h *HostPorts) Map(att Attachment, podIPs []netip.Addr, mappings []PortMapping) error {
	want, err := h.expand(podIPs, mappings)
	if err != nil {
		return err
	}
	key := att.key()
	added, removed, err := h.set(key, want)
	if err != nil {
		return err
	}
	if len(added)+len(removed) > 0 {
		h.log.Info("hostPort mappings changed", zap.String("owner", key),
			zap.Stringers("added", added), zap.Stringers("removed", removed))
	}
	h.clean(key, added, removed)
	return nil
}

func (h *HostPorts) set(key string, want []hostPortEntry) (added, removed []hostPortEntry, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.loadLocked(); err != nil {
		return nil, nil, err
	}
	have := h.owners[key]
	if slices.Equal(have, want) {
		// Most often a pod without hostPorts: nothing to write, not even the rules.
		return nil, nil, nil
	}
	if err := h.prepareLocked(); err != nil {
		return nil, nil, err
	}
	for _, owner := range slices.Sorted(maps.Keys(h.owners)) {
		if owner == key {
			continue
		}
		for _, e := range h.owners[owner] {
			for _, w := range want {
				if w.overlaps(e) {
					return nil, nil, &PortConflictError{Want: w.String(), Held: e.String(), Holder: owner}
				}
			}
		}
	}
	added, removed = entryDiff(have, want)
	relayChanged := h.relay != nil && (slices.ContainsFunc(added, hostPortEntry.relayed) || slices.ContainsFunc(removed, hostPortEntry.relayed))
	if relayChanged {
		// The sockets first, the old ones kept: a port the node cannot open fails the change
		// before anything else is touched.
		if err := h.openRelayedLocked(added, want); err != nil {
			return nil, nil, err
		}
	}
	b, err := h.newBatch()
	if err == nil {
		b.entries(key, added, removed)
		b.hairpins(hairpinIPs(have), hairpinIPs(want))
		if err = h.sendLocked(b); err != nil {
			err = fmt.Errorf("write hostPort mappings: %w", err)
		}
	}
	if err != nil {
		if relayChanged {
			// Back to owners, which still hold the old mappings; the kernel's error is the one
			// to report.
			h.warnRelay(h.syncRelayLocked())
		}
		return nil, nil, err
	}
	h.store(key, want)
	if relayChanged {
		// Closes the sockets of removed mappings, which cannot fail; others' that still cannot
		// be opened are retried by Ensure.
		h.warnRelay(h.syncRelayLocked())
	}
	return added, removed, nil
}

// Unmap removes every hostPort mapping of the pod interface, then the UDP and SCTP conntrack
// entries they sent to the pod. Unmapping an interface without mappings does nothing.
func (h *HostPorts) Unmap(att Attachment) error {
	key := att.key()
	removed, err := h.unmap(key)
	if err != nil {
		return err
	}
	if len(removed) > 0 {
		h.log.Info("hostPort mappings removed", zap.String("owner", key), zap.Stringers("removed", removed))
	}
	h.clean(key, nil, removed)
	return nil
}

func (h *HostPorts) unmap(key string) ([]hostPortEntry, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.loadLocked(); err != nil {
		return nil, err
	}
	have := h.owners[key]
	if len(have) == 0 {
		return nil, nil
	}
	b, err := h.newBatch()
	if err != nil {
		return nil, err
	}
	b.entries(key, nil, have)
	b.hairpins(hairpinIPs(have), nil)
	if err := h.sendLocked(b); err != nil {
		// Perhaps some of it was gone already (someone deleted the table): read again what is
		// there and remove that.
		h.loaded, h.ready = false, false
		if lerr := h.loadLocked(); lerr != nil {
			return nil, errors.Join(err, lerr)
		}
		if have = h.owners[key]; len(have) == 0 {
			return nil, nil
		}
		b, berr := h.newBatch()
		if berr != nil {
			return nil, berr
		}
		b.entries(key, nil, have)
		b.hairpins(hairpinIPs(have), nil)
		if err := h.sendLocked(b); err != nil {
			return nil, fmt.Errorf("remove hostPort mappings: %w", err)
		}
	}
	h.store(key, nil)
	if slices.ContainsFunc(have, hostPortEntry.relayed) {
		// Closes the pod's sockets, which cannot fail; others' that still cannot be opened are
		// retried by Ensure.
		h.warnRelay(h.syncRelayLocked())
	}
	return have, nil
}

// Check verifies that the pod interface has exactly mappings and that they are in the kernel.
func (h *HostPorts) Check(att Attachment, podIPs []netip.Addr, mappings []PortMapping) error {
	want, err := h.expand(podIPs, mappings)
	if err != nil {
		return err
	}
	key := att.key()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.loadLocked(); err != nil {
		return err
	}
	if have := h.owners[key]; !slices.Equal(have, want) {
		return fmt.Errorf("hostPort mappings are %v, want %v", have, want)
	}
	if len(want) == 0 {
		return nil
	}
	// Read the kernel again: the table may have been changed behind our back.
	k, err := h.readKernelLocked()
	if err != nil {
		return err
	}
	if problems := k.objectProblems(); len(problems) > 0 {
		return fmt.Errorf("hostPort rules are not in place: %v", problems)
	}
	for _, w := range want {
		if !slices.Contains(k.owners[key], w) {
			return fmt.Errorf("%s is missing from the kernel", w)
		}
		if w.relayed() {
			if err := h.relay.Check(w.relayMapping()); err != nil {
				return fmt.Errorf("%s is not relayed: %w", w, err)
			}
			continue
		}
		if !k.hairpin[w.podIP] {
			return fmt.Errorf("hairpin masquerade of %s is missing from the kernel", w.podIP)
		}
	}
	return nil
}

// Adopt runs at start, before any other call is expected: it reads the mappings the kernel holds,
// keeps those of the live pod interfaces (live maps each to its addresses), removes the others
// and anything pointing at an address its owner no longer has, and puts back missing rules. It
// then opens the relay's sockets for the kept mappings on a loopback hostIP; one that cannot be
// opened is reported, and tried again by every later change and by Ensure.
func (h *HostPorts) Adopt(live map[Attachment][]netip.Addr) error {
	keys := map[string][]netip.Addr{}
	for a, ips := range live {
		keys[a.key()] = ips
	}
	h.mu.Lock()
	h.loaded, h.ready = false, false
	if err := h.loadLocked(); err != nil {
		h.mu.Unlock()
		return err
	}
	stale := map[string][]hostPortEntry{}
	for owner, entries := range h.owners {
		var keep []hostPortEntry
		for _, e := range entries {
			if slices.Contains(keys[owner], e.podIP) {
				keep = append(keep, e)
			} else {
				stale[owner] = append(stale[owner], e)
			}
		}
		h.store(owner, keep)
	}
	err := h.ensureLocked()
	// The sockets whatever the kernel said: the kept mappings are known either way.
	relayErr := h.syncRelayLocked()
	h.mu.Unlock()
	if err != nil {
		return errors.Join(err, relayErr)
	}
	for owner, entries := range stale {
		h.log.Info("removed hostPort mappings of a pod that is gone", zap.String("owner", owner), zap.Stringers("removed", entries))
		h.clean(owner, nil, entries)
	}
	return relayErr
}

// Ensure puts back what is missing or different in the kernel: chains, rules, maps, sets and the
// elements of every mapping; and opens the relay's sockets that could not be opened before. The
// daemon calls it periodically; with nothing to repair it only reads.
func (h *HostPorts) Ensure() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.loadLocked(); err != nil {
		return err
	}
	return errors.Join(h.ensureLocked(), h.syncRelayLocked())
}

// clean deletes the conntrack entries the change made stale. Failing that is logged, not
// returned: the rules are in place, and the entries expire on their own once their clients pause.
func (h *HostPorts) clean(owner string, added, removed []hostPortEntry) {
	n, err := h.cleanConntrack(added, removed)
	if err != nil {
		h.log.Warn("delete stale conntrack entries of hostPort mappings", zap.String("owner", owner), zap.Error(err))
	}
	if n > 0 {
		h.log.Info("deleted stale conntrack entries of hostPort mappings", zap.String("owner", owner), zap.Int("entries", n))
	}
}

func (h *HostPorts) store(key string, entries []hostPortEntry) {
	if len(entries) == 0 {
		delete(h.owners, key)
		return
	}
	h.owners[key] = entries
}

// prepareLocked reads the kernel's mappings and makes the rules once; after a failed write both
// are done again.
func (h *HostPorts) prepareLocked() error {
	if err := h.loadLocked(); err != nil {
		return err
	}
	if h.ready {
		return nil
	}
	return h.ensureObjectsLocked()
}

func (h *HostPorts) loadLocked() error {
	if h.loaded {
		return nil
	}
	k, err := h.readKernelLocked()
	if err != nil {
		return err
	}
	for _, bad := range k.undecodable {
		h.log.Warn("hostPort map element not understood; it will be removed", zap.String("element", bad))
	}
	h.owners = k.owners
	h.loaded = true
	return nil
}

func (h *HostPorts) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
}

// kernelState is what the kernel holds of the hostPort objects.
type kernelState struct {
	tableExists bool
	chains      map[string]*nftables.Chain
	rules       map[string][]*nftables.Rule
	sets        map[string]*nftables.Set
	owners      map[string][]hostPortEntry
	elements    map[string][]nftables.SetElement // of the maps and sets, by name
	hairpin     map[netip.Addr]bool
	undecodable []string
}

func (h *HostPorts) readKernelLocked() (*kernelState, error) {
	k := &kernelState{chains: map[string]*nftables.Chain{}, rules: map[string][]*nftables.Rule{},
		sets: map[string]*nftables.Set{}, owners: map[string][]hostPortEntry{},
		elements: map[string][]nftables.SetElement{}, hairpin: map[netip.Addr]bool{}}
	c, err := h.conn()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nft tables: %w", err)
	}
	k.tableExists = hasTable(tables)
	if !k.tableExists {
		return k, nil
	}
	// Each object by name: the table also holds the Service proxy's, possibly tens of thousands
	// of chains, which are none of our business.
	t := h.table()
	for _, want := range hostPortChains() {
		ch, err := c.ListChain(t, want.name)
		if isNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get chain %s: %w", want.name, err)
		}
		k.chains[ch.Name] = ch
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		k.rules[ch.Name] = rules
	}
	for _, want := range wantSets(t) {
		s, err := c.GetSetByName(t, want.Name)
		if isNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get set %s: %w", want.Name, err)
		}
		k.sets[s.Name] = s
	}
	for _, m := range hpMaps {
		have, ok := k.sets[m.name()]
		if !ok || !sameSetType(have, m.set(t)) {
			continue
		}
		els, err := c.GetSetElements(have)
		if err != nil {
			return nil, fmt.Errorf("list elements of map %s: %w", m.name(), err)
		}
		k.elements[m.name()] = els
		for _, el := range els {
			e, owner, err := m.decodeElement(el)
			if err != nil || owner == "" || mapOf(e) != m {
				k.undecodable = append(k.undecodable, fmt.Sprintf("%s %x : %x comment %q", m.name(), el.Key, el.Val, el.Comment))
				continue
			}
			k.owners[owner] = append(k.owners[owner], e)
		}
	}
	for _, v6 := range []bool{false, true} {
		want := hairpinSet(t, v6)
		have, ok := k.sets[want.Name]
		if !ok || !sameSetType(have, want) {
			continue
		}
		els, err := c.GetSetElements(have)
		if err != nil {
			return nil, fmt.Errorf("list elements of set %s: %w", want.Name, err)
		}
		k.elements[want.Name] = els
		for _, el := range els {
			if ip, ok := decodeHairpin(el); ok {
				k.hairpin[ip] = true
			}
		}
	}
	for owner, es := range k.owners {
		slices.SortFunc(es, compareEntries)
		k.owners[owner] = slices.Compact(es)
	}
	return k, nil
}

// objectProblems lists what differs from hostPortChains and the maps and sets; nil when all is
// in place.
func (k *kernelState) objectProblems() []string {
	var out []string
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	for _, s := range wantSets(t) {
		if have, ok := k.sets[s.Name]; !ok || !sameSetType(have, s) {
			out = append(out, "set "+s.Name)
		}
	}
	for _, c := range hostPortChains() {
		have, ok := k.chains[c.name]
		if !ok || !sameChainKind(have, c.nft(t)) {
			out = append(out, "chain "+c.name)
			continue
		}
		if !sameRules(k.rules[c.name], c.exprs()) {
			out = append(out, "rules of chain "+c.name)
		}
	}
	return out
}

// isNotExist reports whether err says the object asked for does not exist. Some calls of
// google/nftables format the kernel's errno with %v, so the message is looked at as well.
func isNotExist(err error) bool {
	return err != nil && (errors.Is(err, unix.ENOENT) || strings.HasSuffix(err.Error(), unix.ENOENT.Error()))
}

func wantSets(t *nftables.Table) []*nftables.Set {
	var out []*nftables.Set
	for _, m := range hpMaps {
		out = append(out, m.set(t))
	}
	return append(out, hairpinSet(t, false), hairpinSet(t, true))
}

func (c hpChain) nft(t *nftables.Table) *nftables.Chain {
	ch := &nftables.Chain{Name: c.name, Table: t}
	if c.hook != nil {
		ch.Type = nftables.ChainTypeNAT
		ch.Hooknum = c.hook
		ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.prio))
	}
	return ch
}

func (c hpChain) exprs() [][]expr.Any {
	var out [][]expr.Any
	for _, r := range c.rules {
		out = append(out, r.exprs())
	}
	return out
}

// sameChainKind reports whether have is a base chain of want's hook, or a regular chain like want.
func sameChainKind(have, want *nftables.Chain) bool {
	if want.Hooknum == nil {
		return have.Hooknum == nil
	}
	return sameHook(have, want)
}

func sameSetType(have, want *nftables.Set) bool {
	return have.IsMap == want.IsMap && have.KeyType.Name == want.KeyType.Name && have.KeyType.Bytes == want.KeyType.Bytes &&
		(!want.IsMap || have.DataType.Name == want.DataType.Name && have.DataType.Bytes == want.DataType.Bytes)
}

// ensureLocked brings chains, rules, maps and sets, then the elements, to what they should be.
func (h *HostPorts) ensureLocked() error {
	if err := h.ensureObjectsLocked(); err != nil {
		return err
	}
	return h.ensureElementsLocked()
}

// ensureObjectsLocked creates what is missing of the table, chains, maps and sets and rewrites
// what differs, in one transaction; with everything in place it sends nothing. A map or set of
// another layout is replaced, together with the rules that use it, and filled from owners.
func (h *HostPorts) ensureObjectsLocked() error {
	k, err := h.readKernelLocked()
	if err != nil {
		return err
	}
	b, err := h.newBatch()
	if err != nil {
		return err
	}
	t := b.t
	if !k.tableExists {
		b.c.AddTable(t)
		b.n++
	}
	rebuild := false
	for _, s := range wantSets(t) {
		if have, ok := k.sets[s.Name]; ok && !sameSetType(have, s) {
			rebuild = true
		}
	}
	chains := hostPortChains()
	var fill []hpChain
	for _, c := range chains {
		want := c.nft(t)
		have, ok := k.chains[c.name]
		switch {
		case !ok:
			b.c.AddChain(want)
		case !sameChainKind(have, want):
			// A base chain's hook cannot change in place; within one transaction the swap is
			// atomic. A chain must be empty to be deleted.
			b.c.FlushChain(want)
			b.c.DelChain(want)
			b.c.AddChain(want)
		case rebuild || !sameRules(k.rules[c.name], c.exprs()):
			b.c.FlushChain(want)
		default:
			continue
		}
		b.n++
		fill = append(fill, c)
	}
	for _, s := range wantSets(t) {
		have, ok := k.sets[s.Name]
		if ok && sameSetType(have, s) {
			continue
		}
		if ok {
			b.c.DelSet(s)
		}
		if err := b.c.AddSet(s, h.wantElements(s.Name)); err != nil {
			return fmt.Errorf("add set %s: %w", s.Name, err)
		}
		b.n++
	}
	for _, c := range fill {
		for _, e := range c.exprs() {
			b.c.AddRule(&nftables.Rule{Table: t, Chain: c.nft(t), Exprs: e})
		}
	}
	if err := h.sendLocked(b); err != nil {
		return fmt.Errorf("write hostPort rules: %w", err)
	}
	h.ready = true
	return nil
}

// ensureElementsLocked makes the elements of the maps and sets those of owners.
func (h *HostPorts) ensureElementsLocked() error {
	k, err := h.readKernelLocked()
	if err != nil {
		return err
	}
	b, err := h.newBatch()
	if err != nil {
		return err
	}
	for _, s := range wantSets(b.t) {
		want := h.wantElements(s.Name)
		have := k.elements[s.Name]
		var add, del []nftables.SetElement
		for _, w := range want {
			i := slices.IndexFunc(have, func(e nftables.SetElement) bool { return bytes.Equal(e.Key, w.Key) })
			switch {
			case i < 0:
				add = append(add, w)
			case !bytes.Equal(have[i].Val, w.Val) || have[i].Comment != w.Comment:
				del = append(del, have[i])
				add = append(add, w)
			}
		}
		for _, e := range have {
			if !slices.ContainsFunc(want, func(w nftables.SetElement) bool { return bytes.Equal(e.Key, w.Key) }) {
				del = append(del, e)
			}
		}
		b.del(s, keysOnly(del))
		b.add(s, add)
	}
	if err := h.sendLocked(b); err != nil {
		return fmt.Errorf("write hostPort mappings: %w", err)
	}
	return nil
}

// wantElements are the elements the named map or set should hold, from owners.
func (h *HostPorts) wantElements(name string) []nftables.SetElement {
	var out []nftables.SetElement
	for _, owner := range slices.Sorted(maps.Keys(h.owners)) {
		for _, e := range h.owners[owner] {
			if mapOf(e).name() == name {
				out = append(out, e.element(owner))
			}
		}
		for _, ip := range hairpinIPs(h.owners[owner]) {
			if hairpinSet(nil, ip.Is6()).Name == name {
				out = append(out, hairpinElement(ip))
			}
		}
	}
	return out
}

func keysOnly(els []nftables.SetElement) []nftables.SetElement {
	out := make([]nftables.SetElement, len(els))
	for i, e := range els {
		out[i] = nftables.SetElement{Key: e.Key}
	}
	return out
}

// hairpinIPs are the pod addresses that need the hairpin masquerade: those with a DNAT mapping.
// A pod never reaches its own relayed mapping: its loopback is its own.
func hairpinIPs(es []hostPortEntry) []netip.Addr {
	var out []netip.Addr
	for _, e := range es {
		if !e.relayed() && !slices.Contains(out, e.podIP) {
			out = append(out, e.podIP)
		}
	}
	return out
}

// entryDiff returns what is in want and not in have, and what is in have and not in want.
func entryDiff(have, want []hostPortEntry) (added, removed []hostPortEntry) {
	for _, w := range want {
		if !slices.Contains(have, w) {
			added = append(added, w)
		}
	}
	for _, e := range have {
		if !slices.Contains(want, e) {
			removed = append(removed, e)
		}
	}
	return added, removed
}

// hpBatch is one transaction, on a connection of its own.
type hpBatch struct {
	batch *nftbatch.Batch
	c     *nftables.Conn // batch.Conn, where the operations queue
	t     *nftables.Table
	n     int // messages queued
}

func (h *HostPorts) newBatch() (*hpBatch, error) {
	b, err := nftbatch.New()
	if err != nil {
		return nil, err
	}
	return &hpBatch{batch: b, c: b.Conn, t: h.table()}, nil
}

func (b *hpBatch) add(s *nftables.Set, els []nftables.SetElement) {
	if len(els) == 0 {
		return
	}
	// SetAddElements and SetDeleteElements fail for anonymous sets only.
	_ = b.c.SetAddElements(s, els)
	b.n++
}

func (b *hpBatch) del(s *nftables.Set, els []nftables.SetElement) {
	if len(els) == 0 {
		return
	}
	_ = b.c.SetDeleteElements(s, els) // fails for anonymous sets only
	b.n++
}

// entries queues the removals, then the additions: a mapping whose pod port changed is the same
// key with another value, removed and added again. The transaction applies all of it at once.
func (b *hpBatch) entries(owner string, added, removed []hostPortEntry) {
	for _, e := range removed {
		b.del(mapOf(e).set(b.t), []nftables.SetElement{{Key: e.element(owner).Key}})
	}
	for _, e := range added {
		b.add(mapOf(e).set(b.t), []nftables.SetElement{e.element(owner)})
	}
}

func (b *hpBatch) hairpins(have, want []netip.Addr) {
	for _, ip := range want {
		if !slices.Contains(have, ip) {
			b.add(hairpinSet(b.t, ip.Is6()), []nftables.SetElement{hairpinElement(ip)})
		}
	}
	for _, ip := range have {
		if !slices.Contains(want, ip) {
			b.del(hairpinSet(b.t, ip.Is6()), []nftables.SetElement{hairpinElement(ip)})
		}
	}
}

// sendLocked sends the batch as one transaction, if it holds anything. After a failure the rules
// are looked at again before the next write.
func (h *HostPorts) sendLocked(b *hpBatch) error {
	if b.n == 0 {
		return nil
	}
	if err := b.batch.Send(h.netnsFD); err != nil {
		h.ready = false
		return err
	}
	return nil
}

// nodeAddrs lists the addresses of the namespace open as netnsFD (0: the calling thread's).
func nodeAddrs(netnsFD int) ([]netip.Addr, error) {
	var h *netlink.Handle
	var err error
	if netnsFD != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(netnsFD), unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	addrs, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p := fromIPNet(a.IPNet); p.IsValid() {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}
