package proxy

import (
	"maps"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nodenet/nodenet/hub"
)

// Protocol is a transport protocol a Service port can use.
type Protocol string

// The protocols kube-proxy load-balances.
const (
	TCP  Protocol = "tcp"
	UDP  Protocol = "udp"
	SCTP Protocol = "sctp"
)

// ServiceKey names a Service.
type ServiceKey struct {
	Namespace, Name string
}

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// ServicePort is one port of a Service.
type ServicePort struct {
	Name                string
	Protocol            Protocol
	Port                int32
	NodePort            int32 // 0 = none
	HealthCheckNodePort int32 // served by the health server, not by rules
}

// Service is the part of a Kubernetes Service the proxy needs.
type Service struct {
	Namespace, Name          string
	ClusterIPs               []netip.Addr
	ExternalIPs              []netip.Addr
	LoadBalancerIPs          []netip.Addr
	LoadBalancerSourceRanges []netip.Prefix
	Ports                    []ServicePort
	SessionAffinityTimeout   time.Duration // 0 = no ClientIP affinity
	ExternalLocal            bool          // externalTrafficPolicy: Local
	InternalLocal            bool          // internalTrafficPolicy: Local
}

// Key returns the Service's key.
func (s Service) Key() ServiceKey { return ServiceKey{s.Namespace, s.Name} }

// Endpoint is one backend address of a Service.
type Endpoint struct {
	Addr        netip.Addr
	Ports       map[string]int32 // by Service port name
	NodeName    string
	Ready       bool
	Serving     bool
	Terminating bool
	ZoneHints   []string
	NodeHints   []string
}

// Node holds the facts about the node the rules are built for.
type Node struct {
	Name string
	Zone string
	// Addresses accepting NodePort traffic. Nil means every local
	// address (matched with `fib daddr type local`); empty but not nil,
	// none (proxy.nodePortAddresses matched no address of the node).
	Addresses []netip.Addr
}

// State is everything Build needs.
type State struct {
	Services      []Service
	Endpoints     map[ServiceKey][]Endpoint
	Node          Node
	ClusterCIDRs  []netip.Prefix // pod CIDRs; sources outside them are off-cluster
	MasqueradeAll bool
}

// FromHub returns the source of a Service's input over the hub's cache; it
// reports false for Services the proxy does not handle. The source converts
// the objects whenever it is asked (see InputSource).
func FromHub(svc *hub.Service, slices []*hub.EndpointSlice) (InputSource, bool) {
	if !handled(svc) {
		return nil, false
	}
	return hubSource{svc, slices}, true
}

// hubSource is a Service and its EndpointSlices as the hub caches them.
type hubSource struct {
	svc    *hub.Service
	slices []*hub.EndpointSlice
}

func (h hubSource) Input() ServiceInput {
	in, _ := InputFromObjects(h.svc, h.slices)
	return in
}

// ServiceOf returns the Service of a source's input, without building its
// endpoints where the source can.
func ServiceOf(src InputSource) Service {
	if h, ok := src.(hubSource); ok {
		svc, _ := serviceFromObject(h.svc)
		return svc
	}
	return src.Input().Service
}

// InputFromObjects converts one Service and its EndpointSlices, as the hub
// caches them. It reports false for Services the proxy does not handle.
// Endpoints are deduplicated by address across slices (the same address may
// sit in two slices while the controller moves it).
func InputFromObjects(svc *hub.Service, slices []*hub.EndpointSlice) (ServiceInput, bool) {
	s, ok := serviceFromObject(svc)
	if !ok {
		return ServiceInput{}, false
	}
	in := ServiceInput{Service: s}
	n := 0
	for _, sl := range slices {
		n += len(sl.Endpoints)
	}
	in.Endpoints = make([]Endpoint, 0, n)
	seen := make(map[netip.Addr]int, n)
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := make(map[string]int32, len(sl.Ports))
		for _, p := range sl.Ports {
			ports[p.Name] = p.Port
		}
		for _, e := range sl.Endpoints {
			if i, dup := seen[e.Addr]; dup {
				// Keep the first conditions, merge the ports into a copy:
				// the map may be shared with the first slice's endpoints.
				merged := maps.Clone(in.Endpoints[i].Ports)
				maps.Copy(merged, ports)
				in.Endpoints[i].Ports = merged
				continue
			}
			seen[e.Addr] = len(in.Endpoints)
			in.Endpoints = append(in.Endpoints, Endpoint{
				Addr:        e.Addr,
				Ports:       ports, // shared by the slice's endpoints, never changed in place
				NodeName:    e.NodeName(),
				Ready:       e.Ready,
				Serving:     e.Serving,
				Terminating: e.Terminating,
				ZoneHints:   e.ZoneHints(),
				NodeHints:   e.NodeHints(),
			})
		}
	}
	return in, true
}

// handled reports whether the proxy programs a Service: not one another
// proxy claims, nor an ExternalName or headless one, nor one without a
// cluster IP yet.
func handled(svc *hub.Service) bool {
	return !svc.OtherProxy && svc.Type != corev1.ServiceTypeExternalName && !svc.Headless && len(svc.ClusterIPs) > 0
}

func serviceFromObject(svc *hub.Service) (Service, bool) {
	if !handled(svc) {
		return Service{}, false
	}
	// The address lists are shared with the hub's cache, which never changes them.
	s := Service{
		Namespace:              svc.Namespace,
		Name:                   svc.Name,
		ClusterIPs:             svc.ClusterIPs,
		ExternalIPs:            svc.ExternalIPs(),
		ExternalLocal:          svc.ExternalTrafficLocal,
		InternalLocal:          svc.InternalTrafficLocal,
		SessionAffinityTimeout: svc.SessionAffinityTimeout(),
	}
	if svc.Type == corev1.ServiceTypeLoadBalancer {
		s.LoadBalancerIPs = svc.LoadBalancerIPs()
		for _, p := range svc.LoadBalancerSourceRanges() {
			s.LoadBalancerSourceRanges = append(s.LoadBalancerSourceRanges, p.Masked())
		}
	}
	for _, p := range svc.Ports {
		proto, ok := protocolOf(p.Protocol)
		if !ok {
			continue
		}
		sp := ServicePort{Name: p.Name, Protocol: proto, Port: p.Port, NodePort: p.NodePort}
		if s.ExternalLocal {
			sp.HealthCheckNodePort = svc.HealthCheckNodePort()
		}
		s.Ports = append(s.Ports, sp)
	}
	return s, true
}

// protocolOf maps the protocols the proxy load-balances to its own names.
func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP:
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	case corev1.ProtocolSCTP:
		return SCTP, true
	}
	return "", false
}
