package zone

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nodenet/nodenet/hub"
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
func newService(svc *hub.Service, endpointSlices []*hub.EndpointSlice) (*service, bool) {
	s := &service{name: strings.ToLower(svc.Name), namespace: strings.ToLower(svc.Namespace)}
	switch {
	case svc.Type == corev1.ServiceTypeExternalName:
		target := strings.ToLower(strings.TrimSuffix(svc.ExternalName(), "."))
		if target == "" {
			return nil, false
		}
		s.externalName = target + "."
		return s, true
	case svc.Headless:
		s.headless = true
		s.endpoints, s.ports = publishedEndpoints(endpointSlices, svc.PublishNotReadyAddresses)
		return s, true
	}
	if len(svc.ClusterIPs) == 0 {
		return nil, false // not allocated yet
	}
	s.clusterIPs = svc.ClusterIPs // shared with the hub's cache, which never changes it
	for _, p := range svc.Ports {
		s.ports = append(s.ports, port{name: strings.ToLower(p.Name), protocol: protocolLabel(p.Protocol), number: uint16(p.Port)})
	}
	return s, true
}

// protocolLabel is a protocol as SRV names spell it.
func protocolLabel(p corev1.Protocol) string {
	switch p {
	case corev1.ProtocolTCP:
		return "tcp"
	case corev1.ProtocolUDP:
		return "udp"
	case corev1.ProtocolSCTP:
		return "sctp"
	}
	return strings.ToLower(string(p))
}

// publishedEndpoints collects the addresses DNS returns for a headless Service: ready ones, or
// all of them when the Service publishes not-ready addresses (as StatefulSets' governing
// Services do, so peers find each other before they are ready). Terminating endpoints are never
// published: their pods are going away.
func publishedEndpoints(endpointSlices []*hub.EndpointSlice, publishNotReady bool) ([]endpoint, []port) {
	var eps []endpoint
	var ports []port
	for _, sl := range endpointSlices {
		if sl.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		for _, p := range sl.Ports {
			ports = append(ports, port{name: strings.ToLower(p.Name), protocol: protocolLabel(p.Protocol), number: uint16(p.Port)})
		}
		for _, e := range sl.Endpoints {
			// A terminating endpoint is not ready, so it leaves DNS as its pod goes away.
			if !publishNotReady && !e.Ready {
				continue
			}
			for _, addr := range e.Addrs() {
				label := dashed(addr)
				if h := e.Hostname(); h != "" {
					label = strings.ToLower(h)
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
