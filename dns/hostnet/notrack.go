package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nftbatch"
)

const (
	// tableName is nodenet's table of the inet family. The routing and proxy packages keep
	// chains and sets of their own in it, so this package touches only the chains below.
	tableName = "nodenet"
	// preroutingChain skips connection tracking for queries arriving from pods and other hosts.
	preroutingChain = "dns-notrack-prerouting"
	// outputChain skips it for the answers and for queries made on the node itself.
	outputChain = "dns-notrack-output"
)

// notrackRule is one rule of the notrack chains in our own terms, so the rule set can be built,
// printed and compared without a kernel.
type notrackRule struct {
	proto uint8 // unix.IPPROTO_UDP or unix.IPPROTO_TCP
	addr  netip.Addr
	port  uint16
	// toServer matches packets to addr:port (queries); otherwise packets from it (answers).
	toServer bool
}

// notrackChains is the whole wanted state: the rules of each chain, in order.
type notrackChains struct {
	prerouting, output []notrackRule
}

// buildNotrack follows NodeLocal DNSCache's raw-table rules: in prerouting, UDP and TCP to each
// address and port; in output, the answers from it and the queries to it made on the node.
// Without conntrack, a burst of UDP queries from one socket cannot race on inserting the same
// entry (the "5 second DNS timeout"), and the DNS traffic uses no conntrack table space.
func buildNotrack(addrs []netip.Addr, port uint16) notrackChains {
	var c notrackChains
	for _, a := range addrs {
		for _, proto := range []uint8{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			query := notrackRule{proto: proto, addr: a, port: port, toServer: true}
			answer := query
			answer.toServer = false
			c.prerouting = append(c.prerouting, query)
			c.output = append(c.output, answer, query)
		}
	}
	return c
}

// String renders the rule as nft lists it.
func (r notrackRule) String() string {
	fam, proto, dir, portDir := "ip", "udp", "saddr", "sport"
	if r.addr.Is6() {
		fam = "ip6"
	}
	if r.proto == unix.IPPROTO_TCP {
		proto = "tcp"
	}
	if r.toServer {
		dir, portDir = "daddr", "dport"
	}
	return fmt.Sprintf("%s %s %s %s %s %d notrack", fam, dir, r.addr, proto, portDir, r.port)
}

// String renders the chains as golden text.
func (c notrackChains) String() string {
	var b strings.Builder
	for _, ch := range []struct {
		name  string
		rules []notrackRule
	}{{preroutingChain, c.prerouting}, {outputChain, c.output}} {
		fmt.Fprintf(&b, "chain %s {\n", ch.name)
		for _, r := range ch.rules {
			fmt.Fprintf(&b, "\t%s\n", r)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// exprs turns the rule into nftables expressions; the kernel hands back exactly these on a dump,
// which is what lets EnsureNotrack compare the chains it finds with the ones it wants. An inet
// chain sees both families, so the family is checked before the address is read at its offset.
func (r notrackRule) exprs() []expr.Any {
	nfproto := byte(unix.NFPROTO_IPV4)
	addrOffset := uint32(12) // saddr in the IPv4 header; daddr follows it
	if r.addr.Is6() {
		nfproto = unix.NFPROTO_IPV6
		addrOffset = 8
	}
	addrLen := uint32(r.addr.BitLen() / 8)
	portOffset := uint32(0) // source port in the UDP and TCP headers; destination follows it
	if r.toServer {
		addrOffset += addrLen
		portOffset += 2
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset, Len: addrLen},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.addr.AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portOffset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, r.port)},
		&expr.Notrack{},
	}
}

// EnsureNotrack makes the chains dns-notrack-prerouting and dns-notrack-output of table inet
// nodenet hold exactly the notrack rules for addrs and port, in one transaction. It creates the
// table and chains when missing, never touches other chains or sets of the table, and sends
// nothing when the chains are already right; changed says whether it wrote.
func EnsureNotrack(c *nftables.Conn, addrs []netip.Addr, port uint16) (changed bool, err error) {
	if err := validateAddrs(addrs); err != nil {
		return false, err
	}
	if port == 0 {
		return false, errors.New("DNS port 0: want 1-65535")
	}
	want := buildNotrack(addrs, port)
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	// Reads go through c, the write through a batch of its own in c's namespace: an error
	// between the two leaves nothing queued on c.
	batch, err := nftbatch.New()
	if err != nil {
		return false, err
	}
	w := batch.Conn

	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list nft tables: %w", err)
	}
	if !hasTable(tables) {
		w.AddTable(table)
		changed = true
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list nft chains: %w", err)
	}
	for _, spec := range []struct {
		name  string
		hook  *nftables.ChainHook
		rules []notrackRule
	}{
		{preroutingChain, nftables.ChainHookPrerouting, want.prerouting},
		{outputChain, nftables.ChainHookOutput, want.output},
	} {
		chain := &nftables.Chain{
			Name:     spec.name,
			Table:    table,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  spec.hook,
			Priority: nftables.ChainPriorityRaw,
		}
		wrote, err := ensureChain(c, w, findChain(chains, spec.name), chain, spec.rules)
		if err != nil {
			return false, err
		}
		changed = changed || wrote
	}
	if !changed {
		return false, nil
	}
	if err := batch.Send(c.NetNS); err != nil {
		return false, fmt.Errorf("write DNS notrack chains: %w", err)
	}
	return true, nil
}

// ensureChain queues on w what brings chain from have (nil: missing) to rules, reading its rules
// through r, and reports whether it queued anything.
func ensureChain(r, w *nftables.Conn, have, chain *nftables.Chain, rules []notrackRule) (bool, error) {
	switch {
	case have == nil:
		w.AddChain(chain)
	case !sameHook(have, chain):
		// A base chain's hook cannot change in place; the delete and the add share the one
		// transaction, so no packet sees the table without the chain. A chain must be empty to go.
		w.FlushChain(chain)
		w.DelChain(chain)
		w.AddChain(chain)
	default:
		got, err := r.GetRules(chain.Table, chain)
		if err != nil {
			return false, fmt.Errorf("list rules of chain %s: %w", chain.Name, err)
		}
		if sameRules(got, rules) {
			return false, nil
		}
		w.FlushChain(chain)
	}
	for _, rule := range rules {
		w.AddRule(&nftables.Rule{Table: chain.Table, Chain: chain, Exprs: rule.exprs()})
	}
	return true, nil
}

func hasTable(tables []*nftables.Table) bool {
	for _, t := range tables {
		if t.Name == tableName {
			return true
		}
	}
	return false
}

func findChain(chains []*nftables.Chain, name string) *nftables.Chain {
	for _, c := range chains {
		if c.Table.Name == tableName && c.Name == name {
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

func sameRules(have []*nftables.Rule, want []notrackRule) bool {
	if len(have) != len(want) {
		return false
	}
	for i, r := range have {
		if !reflect.DeepEqual(r.Exprs, want[i].exprs()) {
			return false
		}
	}
	return true
}
