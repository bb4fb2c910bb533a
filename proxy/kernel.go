package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// mapDefs are the proxy's verdict maps by name; they depend on no input.
var mapDefs = func() map[string]VerdictMap {
	out := map[string]VerdictMap{}
	for _, vm := range Skeleton(Facts{}).Maps {
		out[vm.Name] = vm
	}
	return out
}()

var hookNames = func() map[nftables.ChainHook]string {
	out := map[nftables.ChainHook]string{}
	for n, h := range hookNums {
		out[*h] = n
	}
	return out
}()

// readKernel returns the digest of the proxy's objects in the table as the
// kernel holds them: chains with their rules' fingerprints, named sets and
// maps with their elements. A missing table is an empty digest.
func (a *Applier) readKernel(table string) (Digest, error) {
	d := newDigest()
	conn, err := a.newReader()
	if err != nil {
		return d, err
	}
	defer conn.CloseLasting()
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return d, fmt.Errorf("list nft tables: %w", err)
	}
	var t *nftables.Table
	for _, tt := range tables {
		if tt.Name == table {
			t = tt
		}
	}
	if t == nil {
		return d, nil
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return d, fmt.Errorf("list nft chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == table && ownedIn(table, ch.Name) {
			d.Chains[ch.Name] = ChainDigest{Hook: kernelHook(ch)}
		}
	}
	rules, err := a.dumpRules(table)
	if err != nil {
		return d, err
	}
	for _, r := range rules {
		if cd, ok := d.Chains[r.chain]; ok {
			cd.Rules = append(cd.Rules, ruleIDOf(r.userData))
			d.Chains[r.chain] = cd
		}
	}
	sets, err := conn.GetSets(t)
	if err != nil {
		return d, fmt.Errorf("list sets of table %s: %w", table, err)
	}
	for _, s := range sets {
		if s.Anonymous || !ownedIn(table, s.Name) {
			continue
		}
		s.Table = t
		if err := a.readSet(conn, s, &d); err != nil {
			return d, err
		}
	}
	return d, nil
}

// readSet adds a named set or verdict map to d. Anything that does not
// decode as the proxy would have written it gets a definition no model
// has, so the next plan re-creates it.
func (a *Applier) readSet(conn *nftables.Conn, s *nftables.Set, d *Digest) error {
	els, err := conn.GetSetElements(s)
	if err != nil {
		return fmt.Errorf("list elements of %s: %w", s.Name, err)
	}
	if def, ok := mapDefs[s.Name]; ok && def.Plain {
		if s.IsMap {
			d.Maps[s.Name] = "unexpected map " + s.Name
			return nil
		}
		d.Maps[s.Name] = mapDef(def)
		for _, e := range els {
			k, ok := decodeMapKey(def, e.Key)
			if !ok {
				d.Maps[s.Name] = "unexpected element"
				return nil
			}
			d.Elems[elemKey{s.Name, k}] = ""
		}
		return nil
	}
	if def, ok := mapDefs[s.Name]; ok && def.Backends {
		addrLen := addrSetType(def.Family).Bytes
		// The key's type too: maps written before the index was a plain integer are replaced,
		// so that nft can list them and load the listing back.
		if kt, err := keyType(def.Family, def.Key); !s.IsMap || s.DataType.Bytes != addrLen+4 || err != nil || s.KeyType.GetNFTMagic() != kt.GetNFTMagic() {
			d.Maps[s.Name] = "unexpected map " + s.Name
			return nil
		}
		// All or nothing: a map re-created for a bad element comes back
		// empty, and the backends read before it must not count as there.
		read := make(map[elemKey]string, len(els))
		for _, e := range els {
			k, ok := decodeMapKey(def, e.Key)
			a, aok := netip.AddrFromSlice(e.Val[:min(len(e.Val), int(addrLen))])
			if !ok || !aok || len(e.Val) != int(addrLen)+4 {
				d.Maps[s.Name] = "unexpected element"
				return nil
			}
			read[elemKey{s.Name, k}] = netip.AddrPortFrom(a, binary.BigEndian.Uint16(e.Val[addrLen:])).String()
		}
		d.Maps[s.Name] = mapDef(def)
		maps.Copy(d.Elems, read)
		return nil
	}
	if s.IsMap {
		// google/nftables reads a verdict data type into KeyType, losing
		// the key's type and length; decodeMapKey checks each element's
		// length instead.
		def, known := mapDefs[s.Name]
		if !known || s.KeyType.Name != nftables.TypeVerdict.Name && s.DataType.Name != nftables.TypeVerdict.Name {
			d.Maps[s.Name] = "unexpected map " + s.Name
			return nil
		}
		d.Maps[s.Name] = mapDef(def)
		for _, e := range els {
			k, ok := decodeMapKey(def, e.Key)
			v, vok := decodeVerdict(e.Val)
			if !ok || !vok {
				d.Maps[s.Name] = "unexpected element"
				return nil
			}
			d.Elems[elemKey{s.Name, k}] = verdictString(v)
		}
		return nil
	}
	var f Family
	switch s.KeyType.Bytes {
	case 4:
		f = IPv4
	case 16:
		f = IPv6
	default:
		d.Sets[s.Name] = SetDigest{Def: "unexpected " + s.KeyType.Name}
		return nil
	}
	dynamic := s.Dynamic || s.HasTimeout
	sd := SetDigest{Def: setDef(f, dynamic, s.Timeout)}
	if !dynamic {
		var addrs []netip.Addr
		for _, e := range els {
			if ad, ok := netip.AddrFromSlice(e.Key); ok {
				addrs = append(addrs, ad)
			}
		}
		sd.Elems = addrList(addrs)
	}
	d.Sets[s.Name] = sd
	return nil
}

func kernelHook(ch *nftables.Chain) string {
	if ch.Hooknum == nil {
		return ""
	}
	var prio int
	if ch.Priority != nil {
		prio = int(int32(*ch.Priority))
	}
	return fmt.Sprintf("%s %s %d", ch.Type, hookNames[*ch.Hooknum], prio)
}

// decodeMapKey reverses mapKeyBytes.
func decodeMapKey(vm VerdictMap, b []byte) (MapKey, bool) {
	var k MapKey
	for _, f := range vm.Key {
		switch f {
		case FieldSaddr, FieldDaddr:
			n := 4
			if vm.Family == IPv6 {
				n = 16
			}
			if len(b) < n {
				return k, false
			}
			a, _ := netip.AddrFromSlice(b[:n])
			if k.Addr.IsValid() && k.Addr != a {
				return k, false // a pair set holds addresses paired with themselves
			}
			k.Addr = a
			b = b[n:]
		case FieldL4Proto:
			if len(b) < 4 {
				return k, false
			}
			switch b[0] {
			case unix.IPPROTO_TCP:
				k.Proto = TCP
			case unix.IPPROTO_UDP:
				k.Proto = UDP
			case unix.IPPROTO_SCTP:
				k.Proto = SCTP
			default:
				return k, false
			}
			b = b[4:]
		case FieldDport:
			if len(b) < 4 {
				return k, false
			}
			k.Port = binary.BigEndian.Uint16(b)
			b = b[4:]
		case FieldIndex:
			if len(b) < 4 {
				return k, false
			}
			k.Index = binaryutil.NativeEndian.Uint32(b[:4])
			b = b[4:]
		}
	}
	return k, len(b) == 0
}

// decodeVerdict reads a verdict map element's data, which google/nftables
// hands over as the raw attributes of NFTA_DATA_VERDICT.
func decodeVerdict(b []byte) (*expr.Verdict, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, false
	}
	ad.ByteOrder = binary.BigEndian
	v := &expr.Verdict{}
	var code bool
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			v.Kind = expr.VerdictKind(int32(ad.Uint32()))
			code = true
		case unix.NFTA_VERDICT_CHAIN:
			v.Chain = ad.String()
		}
	}
	return v, code && ad.Err() == nil
}

// verdictString renders a kernel verdict as Action.render does.
func verdictString(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictGoto:
		return "goto " + v.Chain
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictDrop:
		return string(ActDrop)
	case expr.VerdictAccept:
		return string(ActAccept)
	case expr.VerdictReturn:
		return string(ActReturn)
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}

type dumpedRule struct {
	chain    string
	userData []byte
}

// dumpRules lists every rule of the table in one netlink dump, in chain
// order. google/nftables only dumps one chain per request, which at tens
// of thousands of chains costs a socket and a round trip each.
func (a *Applier) dumpRules(table string) ([]dumpedRule, error) {
	for attempt := 0; ; attempt++ {
		rules, err := a.dumpRulesOnce(table)
		if errors.Is(err, errDumpInterrupted) && attempt < 5 {
			continue // the ruleset changed during the dump
		}
		return rules, err
	}
}

var errDumpInterrupted = errors.New("nft rule dump interrupted by a concurrent change")

func (a *Applier) dumpRulesOnce(table string) ([]dumpedRule, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: a.netnsFD})
	if err != nil {
		return nil, fmt.Errorf("dial nfnetlink: %w", err)
	}
	defer c.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		// nfgenmsg: family, version, resource id.
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := c.Execute(req)
	if err != nil {
		return nil, fmt.Errorf("dump rules of table %s: %w", table, err)
	}
	var out []dumpedRule
	for _, m := range msgs {
		if m.Header.Flags&netlink.DumpInterrupted != 0 {
			return nil, errDumpInterrupted
		}
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("decode rule: %w", err)
		}
		var r dumpedRule
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				r.chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				r.userData = ad.Bytes()
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode rule: %w", err)
		}
		out = append(out, r)
	}
	return out, nil
}

// generation returns the nftables ruleset generation of the namespace,
// which every committed batch, by anyone, moves on.
func (a *Applier) generation() (uint32, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: a.netnsFD})
	if err != nil {
		return 0, fmt.Errorf("dial nfnetlink: %w", err)
	}
	defer c.Close()
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("read nftables generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("read nftables generation: no generation in the answer")
}

// staleShards lists shard tables the current layout does not use (left
// by a build with more shards).
func (a *Applier) staleShards() ([]string, error) {
	conn, err := a.newReader()
	if err != nil {
		return nil, err
	}
	defer conn.CloseLasting()
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nft tables: %w", err)
	}
	var out []string
	for _, t := range tables {
		if i, ok := shardIndex(t.Name); ok && i >= serviceShards {
			out = append(out, t.Name)
		}
	}
	return out, nil
}
