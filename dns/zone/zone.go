// Package zone answers the cluster domain (cluster.local) from live cluster state, as the
// Kubernetes DNS-Based Service Discovery specification (1.1.0) lays it out: Services, their
// endpoints when headless, named ports, ExternalName aliases, pods by address, and the reverse
// names of all of these. Nothing is cached: an answer reflects the Services as they are the
// moment it is given. Where the specification is silent, answers follow CoreDNS's kubernetes
// plugin (pods insecure), which is what clusters run today.
package zone

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodenet/nodenet/hub"
)

// SchemaVersion is the version of the specification the zone follows, published in
// dns-version.<zone> TXT.
const SchemaVersion = "1.1.0"

// Config describes the zone.
type Config struct {
	Domain string // the cluster domain, e.g. "cluster.local"
	TTL    uint32 // of every record, and the negative-caching TTL of the SOA
	// Nameservers are the addresses published for ns.dns.<zone>: where this server listens.
	Nameservers []netip.Addr
	Now         func() time.Time
}

// Zone is safe for concurrent use: one goroutine applies changes while any number answer.
type Zone struct {
	origin      string // Domain, lower case, fully qualified
	ttl         uint32
	nameservers []netip.Addr
	now         func() time.Time

	// generation counts changes of anything an answer depends on: an answer given at one
	// generation is the answer for as long as it lasts (see Generation).
	generation atomic.Uint64

	mu       sync.RWMutex
	synced   bool
	serial   uint32              // SOA serial: the time of the last change
	services map[string]*service // by "name.namespace", the order of labels in a query
	// perNamespace counts the Services in each namespace: <ns>.svc.<zone> exists while it has one.
	perNamespace map[string]int
	reverse      map[netip.Addr][]string // address → names it points back to, sorted
}

// New returns an empty zone that answers SERVFAIL until MarkSynced.
func New(cfg Config) *Zone {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Zone{
		origin:       strings.ToLower(strings.TrimSuffix(cfg.Domain, ".")) + ".",
		ttl:          cfg.TTL,
		nameservers:  cfg.Nameservers,
		now:          now,
		serial:       uint32(now().Unix()),
		services:     map[string]*service{},
		perNamespace: map[string]int{},
		reverse:      map[netip.Addr][]string{},
	}
}

// Origin is the zone's name, fully qualified and lower case ("cluster.local.").
func (z *Zone) Origin() string { return z.origin }

// Set records the current state of the Service namespace/name: svc nil means it does not exist.
// endpointSlices are its slices; the zone keeps nothing of the objects themselves.
func (z *Zone) Set(namespace, name string, svc *hub.Service, endpointSlices []*hub.EndpointSlice) {
	var s *service
	if svc != nil {
		s, _ = newService(svc, endpointSlices)
	}
	key := strings.ToLower(name) + "." + strings.ToLower(namespace)
	z.mu.Lock()
	defer z.mu.Unlock()
	old, had := z.services[key]
	if had {
		z.unindex(old)
		delete(z.services, key)
		z.perNamespace[old.namespace]--
		if z.perNamespace[old.namespace] == 0 {
			delete(z.perNamespace, old.namespace)
		}
	}
	if s != nil {
		z.services[key] = s
		z.perNamespace[s.namespace]++
		z.index(s)
	}
	if had || s != nil {
		z.serial = max(z.serial+1, uint32(z.now().Unix()))
		z.generation.Add(1)
	}
}

// MarkSynced is called once the zone holds every Service of the cluster: until then it cannot
// tell a name that does not exist from one it has not heard of yet, and answers SERVFAIL.
func (z *Zone) MarkSynced() {
	z.mu.Lock()
	z.synced = true
	z.generation.Add(1)
	z.mu.Unlock()
}

// Generation changes whenever an answer of the zone may change. A caller that read it before
// asking may keep the answer for as long as Generation still returns the same value.
func (z *Zone) Generation() uint64 { return z.generation.Load() }

// index adds the reverse names of a Service's cluster IPs and, for a headless Service, of its
// endpoints.
func (z *Zone) index(s *service) {
	for _, ip := range s.clusterIPs {
		z.addReverse(ip, s.fqdn(z.origin))
	}
	for _, e := range s.endpoints {
		z.addReverse(e.addr, e.label+"."+s.fqdn(z.origin))
	}
}

func (z *Zone) unindex(s *service) {
	for _, ip := range s.clusterIPs {
		z.removeReverse(ip, s.fqdn(z.origin))
	}
	for _, e := range s.endpoints {
		z.removeReverse(e.addr, e.label+"."+s.fqdn(z.origin))
	}
}

func (z *Zone) addReverse(a netip.Addr, name string) {
	names := z.reverse[a]
	if i, found := slices.BinarySearch(names, name); !found {
		z.reverse[a] = slices.Insert(names, i, name)
	}
}

func (z *Zone) removeReverse(a netip.Addr, name string) {
	names := z.reverse[a]
	if i, found := slices.BinarySearch(names, name); found {
		names = slices.Delete(names, i, i+1)
	}
	if len(names) == 0 {
		delete(z.reverse, a)
		return
	}
	z.reverse[a] = names
}

// fqdn is <name>.<namespace>.svc.<zone>.
func (s *service) fqdn(origin string) string { return s.name + "." + s.namespace + ".svc." + origin }
