package zone

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// services answers names under svc.<zone>; labels are the ones before "svc", e.g. [web default]
// for web.default.svc.<zone>.
func (a *answerer) services(labels []string) {
	switch len(labels) {
	case 0: // svc.<zone>: the parent of every namespace
		a.noData()
	case 1:
		if a.z.perNamespace[labels[0]] > 0 {
			a.noData()
		} else {
			a.nxdomain()
		}
	case 2:
		a.service(labels[0], labels[1])
	case 3:
		if strings.HasPrefix(labels[0], "_") {
			a.protocolParent(labels[0][1:], labels[1], labels[2])
		} else {
			a.endpoint(labels[0], labels[1], labels[2])
		}
	case 4:
		if !strings.HasPrefix(labels[0], "_") || !strings.HasPrefix(labels[1], "_") {
			a.nxdomain()
			return
		}
		a.namedPort(labels[0][1:], labels[1][1:], labels[2], labels[3])
	default:
		a.nxdomain()
	}
}

func (a *answerer) lookup(name, namespace string) (*service, bool) {
	s, ok := a.z.services[name+"."+namespace]
	if !ok {
		a.nxdomain()
	}
	return s, ok
}

// service answers <service>.<namespace>.svc.<zone>.
func (a *answerer) service(name, namespace string) {
	s, ok := a.lookup(name, namespace)
	if !ok {
		return
	}
	if s.externalName != "" {
		a.alias(s)
		return
	}
	switch a.qtype {
	case dns.TypeA, dns.TypeAAAA:
		a.answer(a.addresses(a.name, s.addrs(), a.qtype)...)
	case dns.TypeANY:
		a.answer(a.addresses(a.name, s.addrs(), dns.TypeA, dns.TypeAAAA)...)
	case dns.TypeSRV:
		a.srv(s, s.ports)
	default:
		a.noData()
	}
}

// alias answers an ExternalName Service with a CNAME to its target, which the server resolves
// for the asked type (a CNAME query gets the CNAME alone).
func (a *answerer) alias(s *service) {
	a.answer(&dns.CNAME{Hdr: a.hdr(a.name, dns.TypeCNAME), Target: s.externalName})
	if a.qtype != dns.TypeCNAME {
		a.r.Alias = s.externalName
	}
}

// addrs are the addresses the Service's name resolves to.
func (s *service) addrs() []netip.Addr {
	if !s.headless {
		return s.clusterIPs
	}
	out := make([]netip.Addr, 0, len(s.endpoints))
	for _, e := range s.endpoints {
		out = append(out, e.addr)
	}
	return out
}

// endpoint answers <hostname>.<service>.<namespace>.svc.<zone>, which exists for the endpoints of
// headless Services only.
func (a *answerer) endpoint(label, name, namespace string) {
	s, ok := a.lookup(name, namespace)
	if !ok {
		return
	}
	var addrs []netip.Addr
	for _, e := range s.endpoints {
		if e.label == label {
			addrs = append(addrs, e.addr)
		}
	}
	if len(addrs) == 0 {
		a.nxdomain()
		return
	}
	switch a.qtype {
	case dns.TypeANY:
		a.answer(a.addresses(a.name, addrs, dns.TypeA, dns.TypeAAAA)...)
	default:
		a.answer(a.addresses(a.name, addrs, a.qtype)...)
	}
}

// protocolParent answers _<protocol>.<service>.<namespace>.svc.<zone>: an empty name that exists
// when a named port of that protocol lives under it.
func (a *answerer) protocolParent(protocol, name, namespace string) {
	s, ok := a.lookup(name, namespace)
	if !ok {
		return
	}
	for _, p := range s.ports {
		if p.protocol == protocol && p.name != "" && s.externalName == "" {
			a.noData()
			return
		}
	}
	a.nxdomain()
}

// namedPort answers _<port>._<protocol>.<service>.<namespace>.svc.<zone>.
func (a *answerer) namedPort(portName, protocol, name, namespace string) {
	s, ok := a.lookup(name, namespace)
	if !ok {
		return
	}
	var ports []port
	for _, p := range s.ports {
		if p.name == portName && p.protocol == protocol {
			ports = append(ports, p)
		}
	}
	if len(ports) == 0 || s.externalName != "" {
		a.nxdomain()
		return
	}
	if a.qtype != dns.TypeSRV {
		a.noData()
		return
	}
	a.srv(s, ports)
}

// srv answers SRV records for ports: towards the Service's own name for a Service with a cluster
// IP, towards each endpoint's name for a headless one, with their addresses as additional
// records. Weights share 100 equally, as CoreDNS does.
func (a *answerer) srv(s *service, ports []port) {
	type target struct {
		name  string
		addrs []netip.Addr
	}
	var targets []target
	if s.headless {
		byLabel := map[string]int{}
		for _, e := range s.endpoints {
			i, ok := byLabel[e.label]
			if !ok {
				i = len(targets)
				byLabel[e.label] = i
				targets = append(targets, target{name: e.label + "." + s.fqdn(a.z.origin)})
			}
			targets[i].addrs = append(targets[i].addrs, e.addr)
		}
	} else if s.externalName == "" {
		targets = []target{{name: s.fqdn(a.z.origin), addrs: s.clusterIPs}}
	}
	n := len(ports) * len(targets)
	if n == 0 {
		a.noData()
		return
	}
	weight := uint16(100 / n)
	var answer, extra []dns.RR
	for _, p := range ports {
		for _, t := range targets {
			answer = append(answer, &dns.SRV{Hdr: a.hdr(a.name, dns.TypeSRV), Priority: 0, Weight: weight, Port: p.number, Target: t.name})
		}
	}
	for _, t := range targets {
		extra = append(extra, a.addresses(t.name, t.addrs, dns.TypeA, dns.TypeAAAA)...)
	}
	a.answer(answer...)
	a.r.Extra = extra
}
