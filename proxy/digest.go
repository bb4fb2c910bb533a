package proxy

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables/userdata"
)

// Digest is a ruleset reduced to what decides whether the kernel must
// change: per chain its hook and the fingerprints of its rules, per set its
// definition and (static sets only) elements, per map its definition, and
// every map element's verdict. The Syncer keeps the Digest of what it wrote
// and reads one back from the kernel to find drift, and after a restart to
// write nothing when nothing changed. Dynamic sets' elements are packet-path
// state (affinity) and never part of it.
type Digest struct {
	Chains map[string]ChainDigest
	Sets   map[string]SetDigest
	Maps   map[string]string // definition
	Elems  map[elemKey]string
}

// ChainDigest is a chain's hook ("" for a regular chain) and its rules'
// fingerprints in order.
type ChainDigest struct {
	Hook  string
	Rules []uint64
}

// SetDigest is a named set's definition and, for static sets, its sorted
// elements.
type SetDigest struct {
	Def   string
	Elems string
}

func newDigest() Digest {
	return Digest{Chains: map[string]ChainDigest{}, Sets: map[string]SetDigest{}, Maps: map[string]string{}, Elems: map[elemKey]string{}}
}

// digestOf reduces a model.
func digestOf(m Model) Digest {
	d := newDigest()
	for _, c := range m.Chains {
		d.Chains[c.Name] = chainDigestOf(c)
	}
	for _, s := range m.Sets {
		d.Sets[s.Name] = setDigestOf(s)
	}
	for _, vm := range m.Maps {
		d.Maps[vm.Name] = mapDef(vm)
		for _, e := range vm.Elements {
			d.Elems[elemKey{vm.Name, e.Key}] = e.value()
		}
	}
	return d
}

func chainDigestOf(c Chain) ChainDigest {
	cd := ChainDigest{Hook: hookString(c.Base)}
	for _, r := range c.Rules {
		cd.Rules = append(cd.Rules, ruleID(r))
	}
	return cd
}

func (c ChainDigest) equal(o ChainDigest) bool {
	return c.Hook == o.Hook && slices.Equal(c.Rules, o.Rules)
}

func hookString(h *Hook) string {
	if h == nil {
		return ""
	}
	return fmt.Sprintf("%s %s %d", h.Type, h.Hook, h.Priority)
}

func setDigestOf(s Set) SetDigest {
	sd := SetDigest{Def: setDef(s.Family, s.Dynamic, s.Timeout)}
	if !s.Dynamic {
		sd.Elems = addrList(s.Elements)
	}
	return sd
}

func setDef(f Family, dynamic bool, timeout time.Duration) string {
	if !dynamic {
		return addrType(f)
	}
	return fmt.Sprintf("%s dynamic timeout %s", addrType(f), timeout)
}

func mapDef(vm VerdictMap) string {
	if vm.Backends {
		return keyExpr(vm.Family, vm.Key) + " : " + addrType(vm.Family) + " . inet_service"
	}
	return keyExpr(vm.Family, vm.Key) + " : verdict"
}

func addrList(as []netip.Addr) string {
	ss := make([]string, 0, len(as))
	for _, a := range slices.SortedFunc(slices.Values(as), netip.Addr.Compare) {
		ss = append(ss, a.String())
	}
	return strings.Join(ss, ",")
}

// ruleIDType is the user-data TLV type carrying a rule's fingerprint. nft
// shows only the comment type and skips unknown ones.
const ruleIDType userdata.Type = 0x4e

// ruleID is a rule's fingerprint: a hash of its rendering, which names every
// match, the action and its targets.
func ruleID(r Rule) uint64 {
	sum := sha256.Sum256([]byte(r.String()))
	return binary.BigEndian.Uint64(sum[:8])
}

// ruleUserData is what a rule carries besides its expressions: the comment
// nft shows and the fingerprint the Syncer reads back.
func ruleUserData(r Rule) []byte {
	var ud []byte
	if r.Comment != "" {
		ud = userdata.AppendString(ud, userdata.TypeComment, r.Comment)
	}
	return userdata.Append(ud, ruleIDType, binary.BigEndian.AppendUint64(nil, ruleID(r)))
}

// ruleIDOf returns the fingerprint in a rule's user data, 0 when the rule
// was not written by nodenet.
func ruleIDOf(ud []byte) uint64 {
	b := userdata.Get(ud, ruleIDType)
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// diffSummary names, for logs, what differs between two digests.
func diffSummary(have, want Digest) string {
	var out []string
	count := func(what string, n int) {
		if n > 0 {
			out = append(out, fmt.Sprintf("%d %s", n, what))
		}
	}
	missing, extra, changed := compareMaps(have.Chains, want.Chains, ChainDigest.equal)
	count("chains missing", missing)
	count("chains extra", extra)
	count("chains changed", changed)
	missing, extra, changed = compareMaps(have.Elems, want.Elems, func(a, b string) bool { return a == b })
	count("map elements missing", missing)
	count("map elements extra", extra)
	count("map elements changed", changed)
	if !maps.Equal(have.Sets, want.Sets) {
		out = append(out, "sets differ")
	}
	if !maps.Equal(have.Maps, want.Maps) {
		out = append(out, "maps differ")
	}
	return strings.Join(out, ", ")
}

// compareMaps counts the keys of want missing from have, the keys of have
// not in want, and the keys whose values differ.
func compareMaps[K comparable, V any](have, want map[K]V, equal func(V, V) bool) (missing, extra, changed int) {
	for k, w := range want {
		if h, ok := have[k]; !ok {
			missing++
		} else if !equal(h, w) {
			changed++
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			extra++
		}
	}
	return missing, extra, changed
}
