package main

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// query is one name of a mix with the answer it must get: the address of its A record, or no
// address for NXDOMAIN.
type query struct {
	name string
	want netip.Addr
}

// mix is a query mix as dnsperf reads it (one "name A" per line, replayed in a loop) and as the
// warm-up checks it.
type mix struct {
	name    string
	what    string // a description for the report
	file    string
	rcode   string // the response code every answer must carry
	queries []query
	// targetRatio is issue 5's floor for nodenet's QPS over CoreDNS's on this mix; 0 for none.
	targetRatio float64
}

const (
	mixCluster  = "cluster"
	mixSearch   = "search"
	mixExternal = "external"
)

// searchSuffixes are the search domains a kubelet writes for a pod of the bench namespace, tried
// in turn for any name with fewer than five dots (ndots:5).
var searchSuffixes = []string{benchNamespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}

// writeMixes writes the three mixes for size Services into dir: (a) every Service's name, (b)
// every external name under each search suffix, which the cluster domain's server must deny,
// (c) every external name, answered from the cache after the warm-up. Each file is shuffled with
// a fixed seed, so both sides get the same order.
func writeMixes(dir string, size int, w *workload, externalNames int) ([]*mix, error) {
	cluster := &mix{name: mixCluster, what: "Service names (A)", rcode: "NOERROR", targetRatio: 3}
	for i := range size {
		cluster.queries = append(cluster.queries, query{serviceFQDN(i), w.vips[i]})
	}
	search := &mix{name: mixSearch, what: "search-path NXDOMAINs (A)", rcode: "NXDOMAIN"}
	external := &mix{name: mixExternal, what: "cached external names (A)", rcode: "NOERROR", targetRatio: 3}
	for i := range externalNames {
		name := externalName(i)
		external.queries = append(external.queries, query{name, externalAddr(i)})
		for _, suffix := range searchSuffixes {
			search.queries = append(search.queries, query{name: name + suffix + "."})
		}
	}
	mixes := []*mix{cluster, search, external}
	for _, m := range mixes {
		rng := rand.New(rand.NewPCG(uint64(size), uint64(len(m.name))))
		rng.Shuffle(len(m.queries), func(i, j int) { m.queries[i], m.queries[j] = m.queries[j], m.queries[i] })
		var b strings.Builder
		for _, q := range m.queries {
			fmt.Fprintf(&b, "%s A\n", q.name)
		}
		m.file = filepath.Join(dir, fmt.Sprintf("queries-%s-%d.txt", m.name, size))
		if err := os.WriteFile(m.file, []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
	}
	return mixes, nil
}

// topOfRange is the last address of a pod range below its broadcast address.
func topOfRange(cidr string) (netip.Addr, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("pod range %q: %w", cidr, err)
	}
	if !p.Addr().Is4() || p.Bits() > 30 {
		return netip.Addr{}, fmt.Errorf("pod range %s: want an IPv4 range of at least 4 addresses", p)
	}
	return addrAt(p.Masked().Addr(), uint32(1)<<(32-p.Bits())-2), nil
}
