package proxy

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
)

// The kernel checks a whole table for loops and hook misuse whenever a
// transaction adds a rule or verdict-map element that can jump, which is
// every change the proxy makes: a change costs time in proportion to the
// size of the table it touches. Services are therefore spread over
// serviceShards tables of their own, by a hash of their name, and a change
// to one Service is checked against one shard's rules only. The logical
// Model (Build, the golden tests, the tracer) is one table; the Syncer lays
// it out physically:
//
//   - table TableName keeps the routing package's pod-masquerade chain and
//     the proxy's postrouting chains (masquerading of marked packets, which
//     the shards mark);
//   - table shardTable(i) holds a copy of everything else of the skeleton
//     (hooks, maps, helper chains) and the fragments of its Services.
//
// A new connection meets every shard's nat hook until one DNATs it; the
// kernel skips the remaining ones once the connection has its mapping.
const serviceShards = 16

const shardPrefix = TableName + "-svc-"

// shardTable names shard i.
func shardTable(i int) string { return fmt.Sprintf("%s%02d", shardPrefix, i) }

// shardIndex parses a shard table name; ok is false for other tables.
func shardIndex(table string) (int, bool) {
	rest, ok := strings.CutPrefix(table, shardPrefix)
	if !ok || len(rest) != 2 {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil && i >= 0
}

// shardOf places a Service.
func shardOf(k ServiceKey) int {
	h := fnv.New32a()
	h.Write([]byte(k.Namespace))
	h.Write([]byte{0})
	h.Write([]byte(k.Name))
	return int(h.Sum32() % serviceShards)
}

// mainChains are the skeleton chains that stay in table TableName, and
// mainSets the sets they use.
var (
	mainChains = []string{chainNatPostrouting, chainMasquerading}
	mainSets   = []string{setHairpin(IPv4), setHairpin(IPv6)}
)

// elemTable is the table holding element ek of Service k's fragment.
func elemTable(ek elemKey, k ServiceKey) string {
	if slices.Contains(mainSets, ek.Map) {
		return TableName
	}
	return shardTable(shardOf(k))
}

// physicalSkeletons splits the skeleton into the part kept in table
// TableName and the part every shard repeats.
func physicalSkeletons(facts Facts) (main, shard Model) {
	sk := Skeleton(facts)
	main = Model{Table: TableName}
	shard = Model{Sets: sk.Sets}
	for _, vm := range sk.Maps {
		if slices.Contains(mainSets, vm.Name) {
			main.Maps = append(main.Maps, vm)
		} else {
			shard.Maps = append(shard.Maps, vm)
		}
	}
	for _, c := range sk.Chains {
		if slices.Contains(mainChains, c.Name) {
			main.Chains = append(main.Chains, c)
		} else {
			shard.Chains = append(shard.Chains, c)
		}
	}
	return main, shard
}

// ownedIn reports whether a chain, set or map of table is the proxy's: in
// a shard everything is; in the main table only the proxy's names (the
// routing package's chain shares it).
func ownedIn(table, name string) bool {
	if _, ok := shardIndex(table); ok {
		return !strings.HasPrefix(name, "__")
	}
	return ownedName(name)
}
