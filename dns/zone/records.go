package zone

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// service is what the zone keeps of one Service: already in the shape answers take, built once per
// change of the Service or its EndpointSlices rather than once per query.
type service struct {
	name, namespace string
	// Exactly one of these three kinds: an ExternalName alias, a headless Service answered with
	// its endpoints, or a Service answered with its cluster IPs.
	externalName string // fully qualified, lower case
	headless     bool
	clusterIPs   []netip.Addr
	ports        []port     // the Service's ports, or for a headless Service its endpoints' ports
	endpoints    []endpoint // headless only: the endpoints DNS publishes
}

type port struct {
	name     string // lower case; "" for an unnamed port
	protocol string // "tcp", "udp" or "sctp"
	number   uint16
}

type endpoint struct {
	label string // the endpoint's hostname, else its address with dashes
	addr  netip.Addr
}

// newService reads a Service and its EndpointSlices; ok is false for a Service DNS does not
// publish.
func newService(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice) (*service, bool) {
	s := &service{name: strings.ToLower(svc.Name), namespace: strings.ToLower(svc.Namespace)}
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		target := strings.ToLower(strings.TrimSuffix(svc.Spec.ExternalName, "."))
		if target == "" {
			return nil, false
		}
		s.externalName = target + "."
		return s, true
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		s.headless = true
		s.endpoints, s.ports = publishedEndpoints(endpointSlices, svc.Spec.PublishNotReadyAddresses)
		return s, true
	}
	for _, ip := range clusterIPs(svc) {
		if a, err := netip.ParseAddr(ip); err == nil {
			s.clusterIPs = append(s.clusterIPs, a.Unmap())
		}
	}
	if len(s.clusterIPs) == 0 {
		return nil, false // not allocated yet
	}
	for _, p := range svc.Spec.Ports {
		s.ports = append(s.ports, port{name: strings.ToLower(p.Name), protocol: protocolLabel(p.Protocol), number: uint16(p.Port)})
	}
	return s, true
}

// clusterIPs falls back to spec.clusterIP for objects written before dual stack existed.
func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	if svc.Spec.ClusterIP != "" {
		return []string{svc.Spec.ClusterIP}
	}
	return nil
}

func protocolLabel(p corev1.Protocol) string {
	if p == "" {
		return "tcp"
	}
	return strings.ToLower(string(p))
}

// publishedEndpoints collects the addresses DNS returns for a headless Service: ready ones, or
// all of them when the Service publishes not-ready addresses (as StatefulSets' governing
// Services do, so peers find each other before they are ready). Terminating endpoints are never
// published: their pods are going away.
func publishedEndpoints(endpointSlices []*discoveryv1.EndpointSlice, publishNotReady bool) ([]endpoint, []port) {
	var eps []endpoint
	var ports []port
	for _, sl := range endpointSlices {
		if sl.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue
			}
			pt := port{number: uint16(*p.Port), protocol: "tcp"}
			if p.Name != nil {
				pt.name = strings.ToLower(*p.Name)
			}
			if p.Protocol != nil {
				pt.protocol = protocolLabel(*p.Protocol)
			}
			ports = append(ports, pt)
		}
		for _, e := range sl.Endpoints {
			if !published(e.Conditions, publishNotReady) {
				continue
			}
			for _, a := range e.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				addr = addr.Unmap()
				label := dashed(addr)
				if e.Hostname != nil && *e.Hostname != "" {
					label = strings.ToLower(*e.Hostname)
				}
				eps = append(eps, endpoint{label: label, addr: addr})
			}
		}
	}
	slices.SortFunc(eps, func(a, b endpoint) int { return cmp.Or(cmp.Compare(a.label, b.label), a.addr.Compare(b.addr)) })
	slices.SortFunc(ports, comparePorts)
	return slices.Compact(eps), slices.Compact(ports)
}

func comparePorts(a, b port) int {
	return cmp.Or(cmp.Compare(a.name, b.name), cmp.Compare(a.protocol, b.protocol), cmp.Compare(a.number, b.number))
}

// published reads the conditions as the API defines them: a nil Ready means ready. A terminating
// endpoint is not ready, so it leaves DNS as its pod goes away.
func published(c discoveryv1.EndpointConditions, publishNotReady bool) bool {
	return publishNotReady || c.Ready == nil || *c.Ready
}

// dashed writes an address as one DNS label: dots or colons become dashes, as the spec's
// system-assigned endpoint names and pod names do (10.244.1.5 → 10-244-1-5, fd00::1 → fd00--1).
func dashed(a netip.Addr) string { return addressSeparators.Replace(a.String()) }

var addressSeparators = strings.NewReplacer(".", "-", ":", "-")

// undash reads a label written by dashed; ok is false when it is not an address.
func undash(label string) (netip.Addr, bool) {
	if strings.Count(label, "-") == 3 && !strings.Contains(label, "--") {
		a, err := netip.ParseAddr(strings.ReplaceAll(label, "-", "."))
		return a, err == nil && a.Is4()
	}
	a, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ":"))
	return a, err == nil && a.Is6() && !a.Is4In6() && a.Zone() == ""
}
