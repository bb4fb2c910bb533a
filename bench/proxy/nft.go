package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/e2e/lab"
)

// ruleset says where a proxy keeps its Service rules. Both proxies look a packet's
// daddr . l4proto . dport up in a verdict map whose elements goto a per-Service-port chain; that
// chain picks an endpoint with numgen and an anonymous map, either of address . port pairs for a
// dnat in the same rule (kube-proxy 1.37, nodenet) or of gotos to endpoint chains named after the
// endpoint's address (earlier versions of both, and affinity). The benchmark reads both the same
// way (serviceChains, chainEndpoints).
type ruleset struct {
	family     nftables.TableFamily
	serviceMap string
	// tables says which tables of the family are the proxy's: the benchmark reads the Service
	// map in each, and removes them all before a cold start.
	tables func(name string) bool
	// also are tables of other families the proxy owns, removed before a cold start too.
	also []tableRef
}

type tableRef struct {
	family nftables.TableFamily
	name   string
}

var (
	kubeProxyRules = ruleset{family: nftables.TableFamilyIPv4, serviceMap: "service-ips",
		tables: func(name string) bool { return name == "kube-proxy" },
		also:   []tableRef{{nftables.TableFamilyIPv6, "kube-proxy"}}}
	// nodenet's tables (proxy/layout.go): inet nodenet, which the routing package shares, and
	// the Service shards inet nodenet-svc-NN, each with its own map. The daemon is stopped while
	// they are removed, so the next start is cold for both packages.
	nodenetRules = ruleset{family: nftables.TableFamilyINet, serviceMap: "service-ips-v4",
		tables: func(name string) bool { return name == "nodenet" || strings.HasPrefix(name, "nodenet-svc-") }}
)

func (rs ruleset) String() string {
	return fmt.Sprintf("%s map %s", familyName(rs.family), rs.serviceMap)
}

// chainRef names a chain and its table, and the Service address and port whose element goes
// there.
type chainRef struct {
	table, chain string
	key          netip.AddrPort
}

// nftReader reads one namespace's rules over one lasting netlink socket (no nft process per
// poll): a dump of the Service map for cold syncs, and a single chain's rules for changes.
type nftReader struct {
	conn *nftables.Conn
	raw  *netlink.Conn // for single elements (backendmap.go)
	rs   ruleset
}

func newNFTReader(ns *lab.Netns, rs ruleset) (*nftReader, error) {
	f, err := os.Open(ns.Path())
	if err != nil {
		return nil, err
	}
	defer f.Close() // the lasting socket keeps the namespace
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nft socket in %s: %w", ns.Name, err)
	}
	raw, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("netlink socket in %s: %w", ns.Name, err)
	}
	return &nftReader{conn: conn, raw: raw, rs: rs}, nil
}

func (r *nftReader) Close() error { return errors.Join(r.conn.CloseLasting(), r.raw.Close()) }

// serviceChains dumps the Service map of each of the proxy's tables: for each TCP
// ClusterIP:port, the chain it goes to. No map in any table is errMissing.
func (r *nftReader) serviceChains() (map[netip.AddrPort]chainRef, error) {
	tables, err := r.conn.ListTablesOfFamily(r.rs.family)
	if err != nil {
		return nil, fmt.Errorf("list %s tables: %w", familyName(r.rs.family), err)
	}
	var out map[netip.AddrPort]chainRef
	for _, t := range tables {
		if !r.rs.tables(t.Name) {
			continue
		}
		elems, err := r.conn.GetSetElements(&nftables.Set{Table: t, Name: r.rs.serviceMap})
		if err != nil {
			if isENOENT(err) {
				continue
			}
			return nil, fmt.Errorf("dump %s %s map %s: %w", familyName(t.Family), t.Name, r.rs.serviceMap, err)
		}
		if out == nil {
			out = make(map[netip.AddrPort]chainRef, len(elems))
		}
		for _, e := range elems {
			// ipv4_addr . inet_proto . inet_service: each field padded to 4 bytes.
			if len(e.Key) != 12 || e.Key[4] != unix.IPPROTO_TCP {
				continue
			}
			chain := verdictChain(e.Val)
			if chain == "" {
				continue
			}
			key := netip.AddrPortFrom(netip.AddrFrom4([4]byte(e.Key[0:4])), binary.BigEndian.Uint16(e.Key[8:10]))
			out[key] = chainRef{table: t.Name, chain: chain, key: key}
		}
	}
	if out == nil {
		return nil, errMissing
	}
	return out, nil
}

var errMissing = errors.New("not in the kernel")

// isENOENT reports a missing table, chain or set. google/nftables formats some netlink errors
// with %v, so the errno is not always in the chain.
func isENOENT(err error) bool {
	return errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), unix.ENOENT.Error())
}

// chainEndpoints returns what chain's rules send a packet to: the chains of its verdicts and of
// the anonymous verdict maps it looks up (nodenet: numgen → endpoint chains), and the addresses
// in the anonymous data maps it looks up (numgen → map of address . port, fed to dnat: both
// kube-proxy 1.37 and nodenet). A missing chain is errMissing. The maps are read on every call, not cached: a rule
// replaced in place (NLM_F_REPLACE) keeps its handle, and the kernel reuses the names of
// anonymous maps once they are gone.
func (r *nftReader) chainEndpoints(ref chainRef) ([]target, error) {
	if n, ok := pickCount(ref.chain); ok && r.rs.family == nftables.TableFamilyINet {
		return pickedEndpoints(r.raw, ref.table, ref.key, n)
	}
	table := &nftables.Table{Family: r.rs.family, Name: ref.table}
	chain := ref.chain
	rules, err := r.conn.GetRules(table, &nftables.Chain{Table: table, Name: chain})
	if err != nil {
		if isENOENT(err) {
			return nil, errMissing
		}
		return nil, fmt.Errorf("rules of chain %s: %w", chain, err)
	}
	var out []target
	for _, rule := range rules {
		for _, e := range rule.Exprs {
			switch e := e.(type) {
			case *expr.Verdict:
				if e.Chain != "" {
					out = append(out, target{chain: e.Chain})
				}
			case *expr.Lookup:
				if !e.IsDestRegSet || !strings.HasPrefix(e.SetName, "__") {
					continue
				}
				elems, err := r.conn.GetSetElements(&nftables.Set{Table: table, Name: e.SetName})
				if err != nil {
					if isENOENT(err) {
						return nil, errMissing // replaced between the two dumps
					}
					return nil, fmt.Errorf("map %s of chain %s: %w", e.SetName, chain, err)
				}
				for _, el := range elems {
					switch {
					case e.DestRegister == 0: // the verdict register: a verdict map
						if c := verdictChain(el.Val); c != "" {
							out = append(out, target{chain: c})
						}
					default: // a data map: the address first, whatever is concatenated after it
						out = append(out, target{data: el.Val})
					}
				}
			}
		}
	}
	return out, nil
}

// target is a place a Service chain sends packets: a chain, or the data (address . port) of a
// map element it DNATs to.
type target struct {
	chain string
	data  []byte
}

// hasEndpoint reports whether addr is one of targets: an address, or an endpoint chain named
// after it ("...__10.244.1.2/8080", as nodenet and older kube-proxy name them; nodenet before
// the rename "...__10.244.1.2:8080").
func hasEndpoint(targets []target, addr netip.Addr) bool {
	for _, t := range targets {
		if bytes.HasPrefix(t.data, addr.AsSlice()) {
			return true
		}
		_, tail, ok := strings.Cut(t.chain, "__"+addr.String())
		if ok && (strings.HasPrefix(tail, "/") || strings.HasPrefix(tail, ":")) {
			return true
		}
	}
	return false
}

// verdictChain decodes the chain of a goto/jump verdict from a map element's data: the
// NFTA_DATA_VERDICT attributes, of which NFTA_VERDICT_CHAIN holds the name.
func verdictChain(b []byte) string {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
		if l < 4 || l > len(b) {
			return ""
		}
		if typ == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(string(b[4:l]), "\x00")
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return ""
}

// deleteTables removes the proxy's own tables from the namespace, so its next start is cold.
func deleteTables(ns *lab.Netns, rs ruleset) error {
	f, err := os.Open(ns.Path())
	if err != nil {
		return err
	}
	defer f.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return err
	}
	tables, err := conn.ListTables()
	if err != nil {
		return fmt.Errorf("list nft tables in %s: %w", ns.Name, err)
	}
	n := 0
	for _, t := range tables {
		own := t.Family == rs.family && rs.tables(t.Name)
		for _, a := range rs.also {
			own = own || (t.Family == a.family && t.Name == a.name)
		}
		if own {
			conn.DelTable(t)
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("delete the proxy's tables in %s: %w", ns.Name, err)
	}
	return nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	}
	return fmt.Sprint(f)
}
