package routing

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nftbatch"
)

const (
	// tableName is the nodenet table of the inet family. Other components add their own chains
	// to it, so this package only ever touches its own chain in it.
	tableName = "nodenet"
	// masqChain is the chain this package owns in the table.
	masqChain = "pod-masquerade"
)

// natAction is what a natRule does with a packet it matches.
type natAction int

const (
	natReturn natAction = iota
	natMasquerade
)

// natRule is one rule of the pod-masquerade chain in our own terms, so the rule set can be built,
// printed and traced without a kernel. A zero field does not take part in the match.
type natRule struct {
	oifname string
	saddr   netip.Prefix
	daddr   netip.Prefix
	action  natAction
}

// masqueradeRules is the pod-masquerade chain for a node. Pod to pod traffic keeps its source:
// on the node it leaves through the bridge, across nodes it goes to a cluster range. What is
// left from a pod leaves the cluster and takes the node's address. Pod to node traffic is
// delivered locally and never reaches postrouting.
func masqueradeRules(bridge string, podCIDRs, clusterCIDRs []netip.Prefix) []natRule {
	rules := []natRule{{oifname: bridge, action: natReturn}}
	for _, c := range clusterCIDRs {
		rules = append(rules, natRule{daddr: c, action: natReturn})
	}
	for _, p := range podCIDRs {
		rules = append(rules, natRule{saddr: p, action: natMasquerade})
	}
	return rules
}

// String renders the rule as nft lists it.
func (r natRule) String() string {
	var parts []string
	if r.oifname != "" {
		parts = append(parts, fmt.Sprintf("oifname %q", r.oifname))
	}
	for _, m := range []struct {
		dir string
		p   netip.Prefix
	}{{"saddr", r.saddr}, {"daddr", r.daddr}} {
		if !m.p.IsValid() {
			continue
		}
		fam := "ip"
		if m.p.Addr().Is6() {
			fam = "ip6"
		}
		parts = append(parts, fmt.Sprintf("%s %s %s", fam, m.dir, m.p))
	}
	switch r.action {
	case natReturn:
		parts = append(parts, "return")
	case natMasquerade:
		parts = append(parts, "masquerade")
	}
	return strings.Join(parts, " ")
}

// exprs turns the rule into nftables expressions. The kernel hands back exactly these on a
// dump, which is what lets Ensure compare the chain it finds with the one it wants.
func (r natRule) exprs() []expr.Any {
	var e []expr.Any
	if r.oifname != "" {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameData(r.oifname)},
		)
	}
	if r.saddr.IsValid() {
		e = append(e, matchAddr(r.saddr, false)...)
	}
	if r.daddr.IsValid() {
		e = append(e, matchAddr(r.daddr, true)...)
	}
	switch r.action {
	case natReturn:
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	case natMasquerade:
		e = append(e, &expr.Masq{})
	}
	return e
}

// ifnameData is an interface name as the kernel compares it: zero-padded to IFNAMSIZ, so that
// "nodenet0" does not also match "nodenet01".
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// matchAddr matches the source or destination of one family. An inet chain sees IPv4 and IPv6,
// so the network protocol is checked before the header is read at that family's offset.
func matchAddr(p netip.Prefix, dst bool) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	offset := uint32(12) // saddr in the IPv4 header
	if p.Addr().Is6() {
		proto = unix.NFPROTO_IPV6
		offset = 8 // saddr in the IPv6 header
	}
	size := uint32(p.Addr().BitLen() / 8)
	if dst {
		offset += size // daddr follows saddr in both headers
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
	}
	if p.Bits() < p.Addr().BitLen() {
		e = append(e, &expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            size,
			Mask:           net.CIDRMask(p.Bits(), p.Addr().BitLen()),
			Xor:            make([]byte, size),
		})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

// ensureMasquerade brings the pod-masquerade chain to the wanted rules in one transaction. It
// creates the table and chain when missing, never touches other chains of the table, and sends
// nothing at all when the chain already holds the wanted rules.
func (l *Local) ensureMasquerade() error {
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	chain := &nftables.Chain{
		Name:     masqChain,
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	}
	var want [][]expr.Any
	for _, r := range masqueradeRules(l.cfg.Bridge, l.cfg.PodCIDRs, l.cfg.ClusterCIDRs) {
		want = append(want, r.exprs())
	}

	// Reads go through l.nft, the write through a batch of its own: an error between the two
	// leaves nothing queued for a later write to send.
	batch, err := nftbatch.New()
	if err != nil {
		return err
	}
	w := batch.Conn
	tables, err := l.nft.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nft tables: %w", err)
	}
	if !hasTable(tables) {
		w.AddTable(table)
	}
	chains, err := l.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nft chains: %w", err)
	}
	switch have := findChain(chains); {
	case have == nil:
		w.AddChain(chain)
	case !sameHook(have, chain):
		// A base chain's hook cannot be changed in place; both steps share the batch below, so
		// the switch is atomic. A chain must be empty to be deleted.
		w.FlushChain(chain)
		w.DelChain(chain)
		w.AddChain(chain)
	default:
		rules, err := l.nft.GetRules(table, chain)
		if err != nil {
			return fmt.Errorf("list rules of chain %s: %w", masqChain, err)
		}
		if sameRules(rules, want) {
			return nil
		}
		w.FlushChain(chain)
	}
	for _, e := range want {
		w.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: e})
	}
	if err := batch.Send(l.nft.NetNS); err != nil { // the namespace l.nft reads
		return fmt.Errorf("write chain %s: %w", masqChain, err)
	}
	l.log.Info("wrote masquerade chain", zap.String("chain", masqChain), zap.Int("rules", len(want)))
	return nil
}

func hasTable(tables []*nftables.Table) bool {
	for _, t := range tables {
		if t.Name == tableName {
			return true
		}
	}
	return false
}

func findChain(chains []*nftables.Chain) *nftables.Chain {
	for _, c := range chains {
		if c.Table.Name == tableName && c.Name == masqChain {
			return c
		}
	}
	return nil
}

func sameHook(have, want *nftables.Chain) bool {
	return have.Type == want.Type &&
		have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority
}

func sameRules(have []*nftables.Rule, want [][]expr.Any) bool {
	if len(have) != len(want) {
		return false
	}
	for i, r := range have {
		if !reflect.DeepEqual(r.Exprs, want[i]) {
			return false
		}
	}
	return true
}
