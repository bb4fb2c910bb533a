package proxy

import (
	"cmp"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// TableName is the inet table nodenet owns.
const TableName = "nodenet"

// MasqueradeMark is the packet-mark bit that asks postrouting to masquerade.
const MasqueradeMark uint32 = 0x4000

// Names of the fixed chains.
const (
	chainNatPrerouting  = "nat-prerouting"
	chainNatOutput      = "nat-output"
	chainNatPostrouting = "nat-postrouting"
	chainServices       = "services"
	chainEndpointsCheck = "service-endpoints-check"
	chainFirewallCheck  = "firewall-check"
	chainMarkMasq       = "mark-for-masquerade"
	chainMasquerading   = "masquerading"
	chainReject         = "reject-chain"
)

// Hook priorities. The firewall and no-endpoint checks run in the nat
// chains, before the Service lookup, rather than in filter chains as in
// kube-proxy: nat chains see only a connection's first packet, and with a
// filter chain per shard every packet of every connection would pass
// sixteen of them.
const (
	prioDstNAT = -100
	prioSrcNAT = 100
)

var families = []Family{IPv4, IPv6}

func famSuffix(f Family) string { return perFamily(f, "-v4", "-v6") }

// Map and set names, per family. Constants rather than concatenations: every
// element of a verdict map carries its map's name, and the Syncer keeps
// thousands of them as keys.
func mapServiceIPs(f Family) string { return perFamily(f, "service-ips-v4", "service-ips-v6") }
func mapServiceNodePorts(f Family) string {
	return perFamily(f, "service-nodeports-v4", "service-nodeports-v6")
}
func mapNoEPServices(f Family) string {
	return perFamily(f, "no-endpoint-services-v4", "no-endpoint-services-v6")
}
func mapNoEPNodePorts(f Family) string {
	return perFamily(f, "no-endpoint-nodeports-v4", "no-endpoint-nodeports-v6")
}
func mapFirewallIPs(f Family) string { return perFamily(f, "firewall-ips-v4", "firewall-ips-v6") }
func setNodePortIPs(f Family) string { return perFamily(f, "nodeport-ips-v4", "nodeport-ips-v6") }
func setHairpin(f Family) string     { return perFamily(f, "hairpin-v4", "hairpin-v6") }
func setClusterIPs(f Family) string  { return perFamily(f, "cluster-ips-v4", "cluster-ips-v6") }
func chainNodePorts(f Family) string { return perFamily(f, "nodeports-v4", "nodeports-v6") }
func mapBackends(f Family) string    { return perFamily(f, "backends-v4", "backends-v6") }

// chainPick names the chain shared by every chainless Service port with n
// backends of family f.
func chainPick(f Family, n int) string { return fmt.Sprintf("pick-%d%s", n, famSuffix(f)) }

// isServiceIPs says whether a map is a family's Service map.
func isServiceIPs(name string) bool {
	return name == mapServiceIPs(IPv4) || name == mapServiceIPs(IPv6)
}

// isBackendMap says whether a map is a family's backend map.
func isBackendMap(name string) bool { return name == mapBackends(IPv4) || name == mapBackends(IPv6) }

// isPickChain says whether a chain is a pick chain, which Services share.
func isPickChain(name string) bool { return strings.HasPrefix(name, "pick-") }

// pickChain is the pick chain for n backends of family f: it DNATs to the
// backend its packet's key and a random index below n find in the backend
// map.
func pickChain(f Family, n int) Chain {
	return Chain{Name: chainPick(f, n), Rules: []Rule{
		{Action: Action{Kind: ActDNATPick, Map: mapBackends(f), Family: f, Count: n}},
		// Reached only if the lookup found no backend, which a consistent
		// table never lets happen: refused and visible rather than let
		// through untranslated for the rest of the flow's life.
		{Action: Action{Kind: ActGoto, Chain: chainReject}, Comment: "backend missing"},
	}}
}

// pickChainNamed reverses chainPick.
func pickChainNamed(name string) (Chain, bool) {
	rest, ok := strings.CutPrefix(name, "pick-")
	if !ok {
		return Chain{}, false
	}
	for _, f := range families {
		if num, ok := strings.CutSuffix(rest, famSuffix(f)); ok {
			n, err := strconv.Atoi(num)
			if err != nil || n < 1 || chainPick(f, n) != name {
				return Chain{}, false
			}
			return pickChain(f, n), true
		}
	}
	return Chain{}, false
}

func perFamily(f Family, v4, v6 string) string {
	if f == IPv6 {
		return v6
	}
	return v4
}

var (
	keyAddrProtoPort = []Field{FieldDaddr, FieldL4Proto, FieldDport}
	keyProtoPort     = []Field{FieldL4Proto, FieldDport}
	keyAddrPair      = []Field{FieldSaddr, FieldDaddr}
	keyBackend       = []Field{FieldDaddr, FieldL4Proto, FieldDport, FieldIndex}
	loopback         = map[Family]netip.Prefix{IPv4: netip.MustParsePrefix("127.0.0.0/8"), IPv6: netip.MustParsePrefix("::1/128")}
)

// Facts are the inputs every Service's rules depend on; when one of them
// changes, every Service is rebuilt.
type Facts struct {
	Node          Node
	ClusterCIDRs  []netip.Prefix
	MasqueradeAll bool
}

// Facts returns the node facts of s.
func (s State) Facts() Facts {
	return Facts{Node: s.Node, ClusterCIDRs: s.ClusterCIDRs, MasqueradeAll: s.MasqueradeAll}
}

// Fragment is what one Service adds to the ruleset: chains and affinity
// sets of its own, and elements of the shared verdict maps. Fragments of
// different Services never share a chain or set name, which is what lets
// the Syncer rebuild and diff one Service at a time; the pick chains their
// elements may go to are no fragment's.
type Fragment struct {
	Chains   []Chain
	Sets     []Set
	Elements []Element
	// Pairs are the endpoint addresses of the hairpin sets (each set
	// element is the address paired with itself), kept apart from
	// Elements: they are one per endpoint, most of a large world's
	// elements, and need neither a verdict nor a comment.
	Pairs []netip.Addr
	// Backends are the backend lists of the fragment's chainless ports,
	// kept apart from Elements too: one element per endpoint, and they
	// belong to whichever Service holds the port's Service-map key.
	Backends []PortBackends
}

// PortBackends is a chainless port's backends: element Key . i of its
// family's backend map holds To[i].
type PortBackends struct {
	Key MapKey
	To  []netip.AddrPort
}

// elements lists pb as backend-map elements.
func (pb PortBackends) elements() []Element {
	name := mapBackends(familyOf(pb.Key.Addr))
	out := make([]Element, len(pb.To))
	for i, to := range pb.To {
		k := pb.Key
		k.Index = uint32(i)
		out[i] = Element{Map: name, MapElement: MapElement{Key: k, To: to}}
	}
	return out
}

// Element is a verdict-map element together with the map it belongs to.
type Element struct {
	Map string
	MapElement
}

// Build computes the ruleset for s. It is pure and deterministic: the same
// State, in any order, gives the same Model.
func Build(s State) Model {
	facts := s.Facts()
	svcs := slices.Clone(s.Services)
	slices.SortFunc(svcs, func(a, c Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, c.Namespace), cmp.Compare(a.Name, c.Name))
	})
	frags := make([]Fragment, 0, len(svcs))
	for _, svc := range svcs {
		frags = append(frags, BuildService(facts, svc, s.Endpoints[svc.Key()]))
	}
	return assemble(Skeleton(facts), frags)
}

// BuildService computes one Service's fragment from its endpoints.
func BuildService(facts Facts, svc Service, eps []Endpoint) Fragment {
	b := &builder{facts: facts, eps: eps}
	ports := slices.Clone(svc.Ports)
	slices.SortFunc(ports, func(a, c ServicePort) int {
		return cmp.Or(cmp.Compare(a.Name, c.Name), cmp.Compare(a.Protocol, c.Protocol), cmp.Compare(a.Port, c.Port))
	})
	for _, f := range families {
		if len(addrsOf(svc.ClusterIPs, f)) == 0 {
			continue
		}
		for _, p := range ports {
			b.servicePort(svc, p, f)
		}
	}
	return b.frag
}

// assemble adds fragments, in Service order, to the skeleton. Two Services
// may claim the same map key (the API lets them share an external IP and
// port); the first one in namespace/name order gets it, as the kernel
// holds one verdict per key.
func assemble(m Model, frags []Fragment) Model {
	maps := map[string]*VerdictMap{}
	for i := range m.Maps {
		maps[m.Maps[i].Name] = &m.Maps[i]
	}
	var chains []Chain
	taken := map[elemKey]bool{}
	add := func(e Element) {
		k := elemKey{e.Map, e.Key}
		if taken[k] {
			return
		}
		taken[k] = true
		vm := maps[e.Map]
		vm.Elements = append(vm.Elements, e.MapElement)
	}
	for _, fr := range frags {
		chains = append(chains, fr.Chains...)
		m.Sets = append(m.Sets, fr.Sets...)
		won := map[MapKey]bool{}
		for _, e := range fr.Elements {
			if !taken[elemKey{e.Map, e.Key}] && isServiceIPs(e.Map) {
				won[e.Key] = true
			}
			add(e)
			if ks := keySetOf[e.Map]; ks != "" {
				add(Element{Map: ks, MapElement: MapElement{Key: e.Key}})
			}
		}
		// A port's backends are the Service's whose element its Service-map
		// key holds.
		for _, pb := range fr.Backends {
			if won[pb.Key] {
				for _, e := range pb.elements() {
					add(e)
				}
			}
		}
		for _, a := range fr.Pairs {
			add(Element{Map: setHairpin(familyOf(a)), MapElement: MapElement{Key: MapKey{Addr: a}}})
		}
	}
	// Pick chains are shared, in no fragment: a table has those its
	// elements go to, as partial syncs keep them (pickChainChanges).
	picks := map[string]bool{}
	for _, vm := range m.Maps {
		for _, e := range vm.Elements {
			if c := e.Verdict.Chain; isPickChain(c) && !picks[c] {
				if pc, ok := pickChainNamed(c); ok {
					picks[c] = true
					chains = append(chains, pc)
				}
			}
		}
	}
	slices.SortFunc(chains, func(a, c Chain) int { return cmp.Compare(a.Name, c.Name) })
	m.Chains = append(m.Chains, chains...)
	slices.SortFunc(m.Sets, func(a, c Set) int { return cmp.Compare(a.Name, c.Name) })
	for i := range m.Maps {
		slices.SortFunc(m.Maps[i].Elements, func(a, c MapElement) int { return compareKeys(a.Key, c.Key) })
	}
	return m
}

// elemKey names one element of one map.
type elemKey struct {
	Map string
	Key MapKey
}

func compareKeys(a, c MapKey) int {
	return cmp.Or(a.Addr.Compare(c.Addr), cmp.Compare(a.Proto, c.Proto), cmp.Compare(a.Port, c.Port), cmp.Compare(a.Index, c.Index))
}

type builder struct {
	facts Facts
	eps   []Endpoint
	frag  Fragment
	seen  map[string]bool
}

// Skeleton is the part of the ruleset no Service changes: the base and
// helper chains, the node-port address sets and the verdict maps, empty.
func Skeleton(facts Facts) Model {
	jump := func(c string) Action { return Action{Kind: ActJump, Chain: c} }
	// A destination none of the table's maps holds returns at once
	// (keysets.go): every new connection of the node meets every shard.
	var dispatch []Rule
	for _, f := range families {
		dispatch = append(dispatch, Rule{
			Matches: []Match{
				{Field: FieldServiceKey, Neg: true, Family: f, Set: setServiceKeys(f)},
				{Field: FieldNodePortKey, Neg: true, Family: f, Set: setNodePortKeys(f)},
			},
			Action:  Action{Kind: ActReturn},
			Comment: "no Service here",
		})
	}
	dispatch = append(dispatch, Rule{Action: jump(chainFirewallCheck)}, Rule{Action: jump(chainEndpointsCheck)})
	var nodePorts []Chain
	m := Model{Table: TableName}
	services := Chain{Name: chainServices}
	epCheck := Chain{Name: chainEndpointsCheck}
	fwCheck := Chain{Name: chainFirewallCheck}
	for _, f := range families {
		vmap := func(m string, key []Field) Action { return Action{Kind: ActVmap, Map: m, Key: key, Family: f} }
		if r, ok := clusterIPMasquerade(facts, f); ok {
			services.Rules = append(services.Rules, r)
		}
		services.Rules = append(services.Rules, Rule{Action: vmap(mapServiceIPs(f), keyAddrProtoPort)})
		epCheck.Rules = append(epCheck.Rules, Rule{Action: vmap(mapNoEPServices(f), keyAddrProtoPort)})
		fwCheck.Rules = append(fwCheck.Rules, Rule{Action: vmap(mapFirewallIPs(f), keyAddrProtoPort)})

		var local []Match
		if facts.Node.Addresses != nil {
			// Only the listed addresses; a family without any (or an
			// empty, non-nil list) gets an empty set: no NodePort there.
			local = []Match{{Field: FieldDaddr, Family: f, Set: setNodePortIPs(f)}}
			m.Sets = append(m.Sets, Set{Name: setNodePortIPs(f), Family: f, Elements: addrsOf(facts.Node.Addresses, f), Comment: "NodePort addresses"})
		} else {
			local = []Match{
				{Field: FieldNFProto, Family: f},
				{Field: FieldFibDaddrLoc},
				{Field: FieldDaddr, Family: f, Neg: true, Prefixes: []netip.Prefix{loopback[f]}},
			}
		}
		// The NodePort maps sit behind one test per family of whether the
		// destination is a node address: a fib lookup unless
		// nodePortAddresses lists them.
		dispatch = append(dispatch, Rule{Matches: local, Action: jump(chainNodePorts(f))})
		nodePorts = append(nodePorts, Chain{Name: chainNodePorts(f), Rules: []Rule{
			{Action: vmap(mapNoEPNodePorts(f), keyProtoPort)},
			{Action: vmap(mapServiceNodePorts(f), keyProtoPort)},
		}})
		m.Maps = append(m.Maps,
			VerdictMap{Name: mapServiceIPs(f), Family: f, Key: keyAddrProtoPort},
			VerdictMap{Name: mapServiceNodePorts(f), Family: f, Key: keyProtoPort},
			VerdictMap{Name: mapNoEPServices(f), Family: f, Key: keyAddrProtoPort},
			VerdictMap{Name: mapNoEPNodePorts(f), Family: f, Key: keyProtoPort},
			VerdictMap{Name: mapFirewallIPs(f), Family: f, Key: keyAddrProtoPort},
			VerdictMap{Name: setHairpin(f), Family: f, Key: keyAddrPair, Plain: true},
			VerdictMap{Name: setClusterIPs(f), Family: f, Key: keyAddrProtoPort, Plain: true},
			VerdictMap{Name: setServiceKeys(f), Family: f, Key: keyAddrProtoPort, Plain: true},
			VerdictMap{Name: setNodePortKeys(f), Family: f, Key: keyProtoPort, Plain: true},
			VerdictMap{Name: mapBackends(f), Family: f, Key: keyBackend, Backends: true},
		)
	}
	dispatch = append(dispatch, Rule{Action: jump(chainServices)})
	m.Chains = []Chain{
		{Name: chainNatPrerouting, Base: &Hook{"nat", "prerouting", prioDstNAT}, Rules: dispatch},
		{Name: chainNatOutput, Base: &Hook{"nat", "output", prioDstNAT}, Rules: dispatch},
		{Name: chainNatPostrouting, Base: &Hook{"nat", "postrouting", prioSrcNAT}, Rules: []Rule{{Action: jump(chainMasquerading)}}},
	}
	var masq []Rule
	for _, f := range families {
		masq = append(masq, Rule{
			Matches: []Match{{Field: FieldAddrPair, Family: f, Set: setHairpin(f)}},
			Action:  Action{Kind: ActSetMark, Mark: MasqueradeMark},
			Comment: "hairpin",
		})
	}
	m.Chains = append(m.Chains, services, epCheck, fwCheck)
	m.Chains = append(m.Chains, nodePorts...)
	m.Chains = append(m.Chains,
		Chain{Name: chainMarkMasq, Rules: []Rule{{Action: Action{Kind: ActSetMark, Mark: MasqueradeMark}}}},
		Chain{Name: chainMasquerading, Rules: append(masq,
			Rule{Matches: []Match{{Field: FieldMark, Neg: true, Mark: MasqueradeMark}}, Action: Action{Kind: ActReturn}},
			Rule{Action: Action{Kind: ActClearMark, Mark: MasqueradeMark}},
			Rule{Action: Action{Kind: ActMasquerade}},
		)},
		Chain{Name: chainReject, Rules: []Rule{
			{Matches: []Match{{Field: FieldL4Proto, Proto: TCP}}, Action: Action{Kind: ActReject, Reject: RejectTCPReset}},
			{Action: Action{Kind: ActReject, Reject: RejectPortUnreachable}},
		}},
	)
	return m
}

// clusterIPMasquerade is the services chain's rule that marks ClusterIP traffic for
// masquerading — from off-cluster sources, or all of it with MasqueradeAll — for the ClusterIP
// ports in set setClusterIPs(f). kube-proxy writes the same test as a rule in each Service's
// chain; here it is one rule and a set element per port: an element costs the kernel and the
// writer a fraction of a rule, and at 1,000 Services the rules were a quarter of a cold start's
// sync (BenchmarkSyncerColdStart). Without pod ranges nothing tells off-cluster sources apart,
// and there is no rule.
func clusterIPMasquerade(facts Facts, f Family) (Rule, bool) {
	key := Match{Field: FieldServiceKey, Family: f, Set: setClusterIPs(f)}
	mark := Action{Kind: ActJump, Chain: chainMarkMasq}
	if facts.MasqueradeAll {
		return Rule{Matches: []Match{key}, Action: mark, Comment: "masquerade all"}, true
	}
	cidrs := prefixesOf(facts.ClusterCIDRs, f)
	if len(cidrs) == 0 {
		return Rule{}, false
	}
	return Rule{Matches: []Match{{Field: FieldSaddr, Family: f, Neg: true, Prefixes: cidrs}, key}, Action: mark, Comment: "off-cluster source"}, true
}

func (b *builder) addElem(mapName string, e MapElement) {
	b.frag.Elements = append(b.frag.Elements, Element{Map: mapName, MapElement: e})
}

func (b *builder) addChain(c Chain) {
	if b.seen == nil {
		b.seen = map[string]bool{}
	}
	if b.seen[c.Name] {
		return
	}
	b.seen[c.Name] = true
	b.frag.Chains = append(b.frag.Chains, c)
}

// portID is the readable tail of per-port chain names: ns/name/proto/port.
func portID(svc Service, p ServicePort) string {
	n := p.Name
	if n == "" {
		n = strconv.Itoa(int(p.Port))
	}
	return fmt.Sprintf("%s/%s/%s/%s", svc.Namespace, svc.Name, p.Protocol, n)
}

// shortHash gives 8 base32 characters of sha256: enough to keep names
// unique, and with a namespace and name of at most 63 characters each every
// name stays far below nftables' 256-character limit.
func shortHash(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return base32.StdEncoding.EncodeToString(h.Sum(nil))[:8]
}

type portNames struct {
	cluster, local, external, firewall, noLocal string
}

func namesFor(svc Service, p ServicePort, f Family) portNames {
	id := portID(svc, p)
	h := shortHash(famSuffix(f), id)
	return portNames{
		cluster:  "service-" + h + "-" + id,
		local:    "local-" + h + "-" + id,
		external: "external-" + h + "-" + id,
		firewall: "firewall-" + h + "-" + id,
		noLocal:  "no-local-" + h + "-" + id,
	}
}

// endpointName is an endpoint as the names of its chain and affinity set end: address/port, an
// IPv6 address's colons as dots, as kube-proxy names them. nft's parser takes neither a colon nor
// brackets in a name, so that nft's CLI can name them (nft list chain …).
func endpointName(addr netip.Addr, port int32) string {
	return strings.ReplaceAll(addr.String(), ":", ".") + "/" + strconv.Itoa(int(port))
}

type backend struct {
	addr  netip.Addr
	port  int32
	chain string // with affinity only
	set   string // affinity set, "" without affinity
	// hairpin: the endpoint may be the client of its own Service on this node (mayHairpin).
	hairpin bool
}

func (b *builder) servicePort(svc Service, p ServicePort, f Family) {
	n := namesFor(svc, p, f)
	cluster, local := b.categorize(svc, p, f)
	lbIPs := addrsOf(svc.LoadBalancerIPs, f)
	extIPs := addrsOf(svc.ExternalIPs, f)
	hasExternal := len(lbIPs) > 0 || len(extIPs) > 0 || p.NodePort > 0
	internalEPs, externalEPs := cluster, cluster
	internalChain := n.cluster
	if svc.InternalLocal {
		internalEPs, internalChain = local, n.local
	}
	if svc.ExternalLocal {
		externalEPs = local
	}
	// A port reached at its cluster IPs only, without affinity, has no
	// chain of its own: its Service-map element goes to the pick chain
	// shared by every such port with as many backends, which DNATs through
	// the backend map by the packet's own address, protocol and port. A
	// chain and a rule per port cost the kernel and the writer five times
	// what the map elements do (bench/RESULTS.md, the layouts).
	affinity := svc.SessionAffinityTimeout > 0
	chainless := !affinity && !hasExternal
	hasEndpoints := len(cluster) > 0 || len(local) > 0
	usesCluster := len(cluster) > 0 && (!svc.InternalLocal || (hasExternal && !svc.ExternalLocal))
	usesLocal := len(local) > 0 && (svc.InternalLocal || (hasExternal && svc.ExternalLocal))
	// externalTrafficPolicy: Local without a local endpoint: traffic from
	// pods and from the node itself to the external destinations is not
	// external and goes to every endpoint (kube-proxy's short-circuit);
	// only traffic from elsewhere is dropped.
	shortCircuit := hasExternal && svc.ExternalLocal && len(externalEPs) == 0 && usesCluster
	port := uint16(p.Port)

	noEP := Action{Kind: ActDrop} // endpoints exist, just none that fit the policy
	if !hasEndpoints {
		noEP = Action{Kind: ActGoto, Chain: chainReject}
	}
	comment := portID(svc, p)

	// Cluster IPs.
	_, markClusterIPs := clusterIPMasquerade(b.facts, f)
	for _, ip := range addrsOf(svc.ClusterIPs, f) {
		key := MapKey{Addr: ip, Proto: p.Protocol, Port: port}
		if len(internalEPs) > 0 {
			to := internalChain
			if chainless {
				to = chainPick(f, len(internalEPs))
				pb := PortBackends{Key: key, To: make([]netip.AddrPort, len(internalEPs))}
				for i, ep := range internalEPs {
					pb.To[i] = netip.AddrPortFrom(ep.Addr, uint16(ep.Ports[p.Name]))
				}
				b.frag.Backends = append(b.frag.Backends, pb)
			}
			b.addElem(mapServiceIPs(f), MapElement{Key: key, Verdict: Action{Kind: ActGoto, Chain: to}, Comment: comment})
			// ClusterIP traffic that is to be masqueraded (off-cluster sources, or all) is
			// marked by the services chain's one rule for every Service: the key joins its
			// set, whichever the internal traffic policy, as kube-proxy marks it in either
			// policy's chain.
			if markClusterIPs {
				b.addElem(setClusterIPs(f), MapElement{Key: key})
			}
		} else {
			b.addElem(mapNoEPServices(f), MapElement{Key: key, Verdict: noEP, Comment: comment})
		}
	}

	// External destinations: external IPs, load-balancer IPs, NodePort.
	external := func(mapName string, key MapKey) {
		if len(externalEPs) > 0 || shortCircuit {
			b.addElem(mapName, MapElement{Key: key, Verdict: Action{Kind: ActGoto, Chain: n.external}, Comment: comment})
		}
	}
	noExternal := func(mapName string, key MapKey) {
		switch {
		case shortCircuit:
			b.addElem(mapName, MapElement{Key: key, Verdict: Action{Kind: ActJump, Chain: n.noLocal}, Comment: comment})
		case len(externalEPs) == 0:
			b.addElem(mapName, MapElement{Key: key, Verdict: noEP, Comment: comment})
		}
	}
	for _, ip := range append(slices.Clone(extIPs), lbIPs...) {
		key := MapKey{Addr: ip, Proto: p.Protocol, Port: port}
		external(mapServiceIPs(f), key)
		noExternal(mapNoEPServices(f), key)
	}
	if p.NodePort > 0 {
		key := MapKey{Proto: p.Protocol, Port: uint16(p.NodePort)}
		external(mapServiceNodePorts(f), key)
		noExternal(mapNoEPNodePorts(f), key)
	}

	// Source ranges guard the load-balancer IPs only; NodePort bypasses them.
	if len(svc.LoadBalancerSourceRanges) > 0 && len(lbIPs) > 0 {
		for _, ip := range lbIPs {
			b.addElem(mapFirewallIPs(f), MapElement{Key: MapKey{Addr: ip, Proto: p.Protocol, Port: port},
				Verdict: Action{Kind: ActGoto, Chain: n.firewall}, Comment: comment})
		}
		var rule Rule
		if ranges := prefixesOf(svc.LoadBalancerSourceRanges, f); len(ranges) > 0 {
			rule.Matches = []Match{{Field: FieldSaddr, Family: f, Neg: true, Prefixes: ranges}}
		}
		rule.Action = Action{Kind: ActDrop}
		b.addChain(Chain{Name: n.firewall, Rules: []Rule{rule}})
	}

	// Endpoint chains.
	// A pod of any node may reach this node's NodePort untranslated; with the Local policy the
	// external chain sends pod sources to every endpoint, unmasqueraded, the client included.
	anyPodHairpins := p.NodePort > 0 && svc.ExternalLocal
	podRanges := prefixesOf(b.facts.ClusterCIDRs, f)
	mk := func(eps []Endpoint) []backend {
		var out []backend
		for _, ep := range eps {
			be := backend{addr: ep.Addr, port: ep.Ports[p.Name], hairpin: anyPodHairpins || b.mayHairpin(ep, podRanges)}
			if affinity {
				// Only affinity needs a chain and a set per backend; naming
				// them hashes, which is most of a large Service's build.
				tail := comment + "__" + endpointName(ep.Addr, be.port)
				h := shortHash(famSuffix(f), tail)
				be.chain, be.set = "endpoint-"+h+"-"+tail, "affinity-"+h+"-"+tail
			}
			out = append(out, be)
		}
		return out
	}
	clusterBEs, localBEs := mk(cluster), mk(local)
	var used []backend
	if usesCluster {
		used = append(used, clusterBEs...)
	}
	if usesLocal {
		used = append(used, localBEs...)
	}
	for _, be := range used {
		// A pod reaching itself through the Service must be masqueraded,
		// or it would answer itself directly; postrouting checks the pair.
		if be.hairpin {
			b.frag.Pairs = append(b.frag.Pairs, be.addr)
		}
		if !affinity || b.seen[be.set] {
			continue
		}
		// With ClientIP affinity each backend has a chain that records the
		// client in its set; without, no chain per backend (see
		// ActDNATNumgen).
		b.frag.Sets = append(b.frag.Sets, Set{Name: be.set, Family: f, Dynamic: true, Timeout: svc.SessionAffinityTimeout})
		b.addChain(Chain{Name: be.chain, Rules: []Rule{
			{Action: Action{Kind: ActUpdate, Set: be.set, Key: []Field{FieldSaddr}, Family: f}},
			{Matches: []Match{{Field: FieldL4Proto, Proto: p.Protocol}},
				Action: Action{Kind: ActDNAT, To: netip.AddrPortFrom(be.addr, uint16(be.port)), Family: f}},
		}})
		b.seen[be.set] = true
	}

	// Policy chains pick a backend: an affinity hit first, else at random.
	pick := func(bes []backend) []Rule {
		if !affinity {
			var to []netip.AddrPort
			for _, be := range bes {
				to = append(to, netip.AddrPortFrom(be.addr, uint16(be.port)))
			}
			return []Rule{{Matches: []Match{{Field: FieldL4Proto, Proto: p.Protocol}},
				Action: Action{Kind: ActDNATNumgen, Backends: to, Family: f}}}
		}
		var rules []Rule
		for _, be := range bes {
			rules = append(rules, Rule{
				Matches: []Match{{Field: FieldSaddr, Family: f, Set: be.set}},
				Action:  Action{Kind: ActGoto, Chain: be.chain},
			})
		}
		var chains []string
		for _, be := range bes {
			chains = append(chains, be.chain)
		}
		return append(rules, Rule{Action: Action{Kind: ActNumgen, Targets: chains}})
	}
	if usesCluster && !chainless {
		b.addChain(Chain{Name: n.cluster, Rules: pick(clusterBEs)})
	}
	if usesLocal && !chainless {
		b.addChain(Chain{Name: n.local, Rules: pick(localBEs)})
	}
	if hasExternal && (len(externalEPs) > 0 || shortCircuit) {
		var rules []Rule
		if !svc.ExternalLocal {
			rules = []Rule{
				{Action: Action{Kind: ActJump, Chain: chainMarkMasq}},
				{Action: Action{Kind: ActGoto, Chain: n.cluster}},
			}
		} else {
			if usesCluster {
				// Traffic from pods and from the node itself is not
				// external: it may use every endpoint, and from the node
				// it must be masqueraded to come back.
				if cidrs := prefixesOf(b.facts.ClusterCIDRs, f); len(cidrs) > 0 {
					rules = append(rules, Rule{
						Matches: []Match{{Field: FieldSaddr, Family: f, Prefixes: cidrs}},
						Action:  Action{Kind: ActGoto, Chain: n.cluster},
						Comment: "pod source",
					})
				}
				rules = append(rules,
					Rule{Matches: []Match{{Field: FieldFibSaddrLoc}}, Action: Action{Kind: ActJump, Chain: chainMarkMasq}, Comment: "node source"},
					Rule{Matches: []Match{{Field: FieldFibSaddrLoc}}, Action: Action{Kind: ActGoto, Chain: n.cluster}, Comment: "node source"},
				)
			}
			if usesLocal {
				rules = append(rules, Rule{Action: Action{Kind: ActGoto, Chain: n.local}})
			}
		}
		b.addChain(Chain{Name: n.external, Rules: rules})
	}
	if shortCircuit {
		// Runs before DNAT, jumped to from the no-endpoint maps: returns
		// pod and node sources to the Service lookups (and so to the
		// external chain above), drops the rest.
		var rules []Rule
		if cidrs := prefixesOf(b.facts.ClusterCIDRs, f); len(cidrs) > 0 {
			rules = append(rules, Rule{Matches: []Match{{Field: FieldSaddr, Family: f, Prefixes: cidrs}}, Action: Action{Kind: ActReturn}, Comment: "pod source"})
		}
		rules = append(rules,
			Rule{Matches: []Match{{Field: FieldFibSaddrLoc}}, Action: Action{Kind: ActReturn}, Comment: "node source"},
			Rule{Action: Action{Kind: ActDrop}},
		)
		b.addChain(Chain{Name: n.noLocal, Rules: rules})
	}
}

// mayHairpin says whether ep can be the source of a packet this node DNATs back to ep without
// masquerading it otherwise. A pod of another node cannot, but for one way (the caller's
// anyPodHairpins): its own node's proxy translates its ClusterIP, external IP and load-balancer
// traffic before routing, so only this node's NodePorts see it untranslated, and those
// masquerade pod sources unless the external policy is Local. Every other endpoint can — one of
// this node, one whose node is not known, and one outside the cluster's pod ranges (a
// host-network pod, an address of a hand-written EndpointSlice) — as can any when the ranges are
// unknown (podRanges, of the endpoint's family, empty). Leaving other nodes' pods out keeps the
// hairpin sets to about this node's share of the endpoints instead of one element per endpoint
// of the cluster.
func (b *builder) mayHairpin(ep Endpoint, podRanges []netip.Prefix) bool {
	if ep.NodeName == "" || ep.NodeName == b.facts.Node.Name {
		return true
	}
	for _, c := range podRanges {
		if c.Contains(ep.Addr) {
			return false
		}
	}
	return true
}

// categorize returns the endpoints of one Service port, family f, usable
// cluster-wide and on this node: Ready ones, or if there are none,
// Serving+Terminating ones (graceful termination). Ready cluster-wide
// endpoints are narrowed by their topology hints (topologyHints).
func (b *builder) categorize(svc Service, p ServicePort, f Family) (cluster, local []Endpoint) {
	all := make([]Endpoint, 0, len(b.eps))
	for _, ep := range b.eps {
		if familyOf(ep.Addr) != f {
			continue
		}
		if port, ok := ep.Ports[p.Name]; !ok || port <= 0 || port > 65535 {
			continue
		}
		all = append(all, ep)
	}
	// By address, the first of duplicates kept: sorting and compacting
	// needs no set of the addresses seen, and this runs for every port of
	// every Service on a cold start.
	slices.SortStableFunc(all, func(a, c Endpoint) int { return a.Addr.Compare(c.Addr) })
	all = slices.CompactFunc(all, func(a, c Endpoint) bool { return a.Addr == c.Addr })
	choose := func(eps []Endpoint) []Endpoint {
		ready := 0
		for _, ep := range eps {
			if ep.Ready {
				ready++
			}
		}
		if ready == len(eps) {
			return eps
		}
		var out []Endpoint
		for _, ep := range eps {
			if ready > 0 && ep.Ready || ready == 0 && ep.Serving && ep.Terminating {
				out = append(out, ep)
			}
		}
		return out
	}
	cluster = choose(all)
	if len(cluster) > 0 && cluster[0].Ready {
		cluster = b.topologyHints(cluster)
	}
	var mine []Endpoint
	for _, ep := range all {
		if ep.NodeName != "" && ep.NodeName == b.facts.Node.Name {
			mine = append(mine, ep)
		}
	}
	return cluster, choose(mine)
}

// topologyHints narrows a port's Ready endpoints to those hinted for this
// node (trafficDistribution: PreferSameNode) when every one of them carries
// node hints and some name this node; failing that, to those hinted for
// this node's zone (PreferSameZone, PreferClose, topology-aware hints) when
// every one carries zone hints and some name the zone; otherwise it keeps
// them all, as kube-proxy does. Hints of terminating endpoints are never
// looked at: without Ready endpoints the cluster-wide ones are all the
// Serving+Terminating ones.
func (b *builder) topologyHints(ready []Endpoint) []Endpoint {
	narrow := func(hints func(Endpoint) []string, want string) []Endpoint {
		if want == "" {
			return nil
		}
		var out []Endpoint
		for _, ep := range ready {
			h := hints(ep)
			if len(h) == 0 {
				return nil
			}
			if slices.Contains(h, want) {
				out = append(out, ep)
			}
		}
		return out
	}
	if out := narrow(func(ep Endpoint) []string { return ep.NodeHints }, b.facts.Node.Name); len(out) > 0 {
		return out
	}
	if out := narrow(func(ep Endpoint) []string { return ep.ZoneHints }, b.facts.Node.Zone); len(out) > 0 {
		return out
	}
	return ready
}

func addrsOf(as []netip.Addr, f Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		a = a.Unmap()
		if a.IsValid() && familyOf(a) == f && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func prefixesOf(ps []netip.Prefix, f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		p = p.Masked()
		if p.IsValid() && familyOf(p.Addr()) == f && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, c netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(c.Addr()), cmp.Compare(a.Bits(), c.Bits()))
	})
	return out
}
