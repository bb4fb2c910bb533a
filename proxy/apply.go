package proxy

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"go.uber.org/zap"
)

// Applier writes a Model into the kernel: layer 3. Each Apply is one
// netlink batch, so the kernel moves from the old ruleset to the new one
// atomically or not at all.
//
// This first version re-syncs fully: it deletes every object of the proxy
// found in the table and adds the whole new model. Incremental updates
// (diffing the previous model with the new one and sending only the
// changed map elements and chains) are the next step.
type Applier struct {
	conn *nftables.Conn
	log  *zap.Logger
}

// NewApplier returns an Applier writing through conn, which the caller
// makes for the node's namespace (nftables.WithNetNSFd).
func NewApplier(conn *nftables.Conn, log *zap.Logger) *Applier {
	return &Applier{conn: conn, log: log.Named("proxy")}
}

// Apply replaces the proxy's chains, sets and maps in table m.Table with
// those of m. It shares the table with the routing package and never
// touches objects that are not the proxy's (ownedName), in particular the
// pod-masquerade chain; it never deletes or flushes the table.
func (a *Applier) Apply(m Model) error {
	if m.Table == "" {
		return errors.New("apply: model without table")
	}
	objs, err := translate(m)
	if err != nil {
		return fmt.Errorf("translate model: %w", err)
	}
	if err := checkSets(objs); err != nil {
		return err
	}
	oldChains, oldSets, err := a.owned(m.Table)
	if err != nil {
		return err
	}

	c := a.conn
	c.AddTable(objs.table) // NLM_F_CREATE without EXCL: keeps an existing table
	// Rules go first so that nothing refers to the sets and chains any
	// more when they are deleted; the kernel checks references per message.
	for _, ch := range oldChains {
		c.FlushChain(ch)
	}
	for _, s := range oldSets {
		c.DelSet(s)
	}
	for _, ch := range oldChains {
		c.DelChain(ch)
	}
	for _, ch := range objs.chains {
		c.AddChain(ch)
	}
	for _, s := range slices.Concat(objs.sets, objs.anon) {
		if err := c.AddSet(s.set, s.elems); err != nil {
			// checkSets ran the same calls, so this cannot happen; the
			// batch is half queued and must not be sent.
			return fmt.Errorf("add set %s: %w (nft conn holds an unsent partial batch)", s.set.Name, err)
		}
	}
	for _, r := range objs.rules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write table %s: %w", m.Table, err)
	}
	a.log.Info("applied ruleset", zap.String("table", m.Table),
		zap.Int("deletedChains", len(oldChains)), zap.Int("deletedSets", len(oldSets)),
		zap.Int("chains", len(objs.chains)), zap.Int("sets", len(objs.sets)), zap.Int("rules", len(objs.rules)))
	return nil
}

// checkSets queues every set on a scratch Conn that is never flushed.
// google/nftables can only fail AddSet after queueing part of it and has no
// way to drop queued messages, so a failure must be found before anything
// goes into the real Conn's batch.
func checkSets(objs *nftObjects) error {
	scratch, err := nftables.New() // not lasting: opens no socket until Flush
	if err != nil {
		return fmt.Errorf("scratch nft conn: %w", err)
	}
	for _, s := range slices.Concat(objs.sets, objs.anon) {
		if err := scratch.AddSet(s.set, s.elems); err != nil {
			return fmt.Errorf("set %s: %w", s.set.Name, err)
		}
	}
	return nil
}

// owned lists the proxy's chains and named sets in the table, if it exists.
func (a *Applier) owned(table string) ([]*nftables.Chain, []*nftables.Set, error) {
	tables, err := a.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, nil, fmt.Errorf("list nft tables: %w", err)
	}
	var t *nftables.Table
	for _, tt := range tables {
		if tt.Name == table {
			t = tt
		}
	}
	if t == nil {
		return nil, nil, nil
	}
	chains, err := a.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, nil, fmt.Errorf("list nft chains: %w", err)
	}
	var oc []*nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == table && ownedName(ch.Name) {
			oc = append(oc, ch)
		}
	}
	sets, err := a.conn.GetSets(t)
	if err != nil {
		return nil, nil, fmt.Errorf("list sets of table %s: %w", table, err)
	}
	var os []*nftables.Set
	for _, s := range sets {
		if !s.Anonymous && ownedName(s.Name) {
			s.Table = t
			os = append(os, s)
		}
	}
	return oc, os, nil
}
