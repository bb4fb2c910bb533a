package proxy

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
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

const (
	labelServiceName      = discoveryv1.LabelServiceName // kubernetes.io/service-name
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
)

// InputFromObjects converts one Service and its EndpointSlices. It reports
// false for Services the proxy does not handle. Endpoints are deduplicated
// by address across slices (the same address may sit in two slices while
// the controller moves it); a nil ready condition counts as ready.
func InputFromObjects(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) (ServiceInput, bool) {
	s, ok := serviceFromObject(svc)
	if !ok {
		return ServiceInput{}, false
	}
	in := ServiceInput{Service: s}
	n := 0
	for _, sl := range slices {
		n += len(sl.Endpoints)
	}
	// Exactly as many as the slices hold: the Syncer keeps every Service's endpoints, and
	// append's doubling would leave a third of them unused.
	in.Endpoints = make([]Endpoint, 0, n)
	seen := make(map[netip.Addr]int, n)
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := map[string]int32{}
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue
			}
			n := ""
			if p.Name != nil {
				n = *p.Name
			}
			ports[n] = *p.Port
		}
		for _, e := range sl.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				continue
			}
			addr = addr.Unmap()
			if i, dup := seen[addr]; dup {
				// Keep the first conditions, merge the ports into a copy:
				// the map may be shared with the first slice's endpoints.
				merged := maps.Clone(in.Endpoints[i].Ports)
				maps.Copy(merged, ports)
				in.Endpoints[i].Ports = merged
				continue
			}
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			serving := ready
			if e.Conditions.Serving != nil {
				serving = *e.Conditions.Serving
			}
			ep := Endpoint{
				Addr:        addr,
				Ports:       ports, // shared by the slice's endpoints, never changed in place
				Ready:       ready,
				Serving:     serving,
				Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			}
			if e.NodeName != nil {
				ep.NodeName = *e.NodeName
			}
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					ep.ZoneHints = append(ep.ZoneHints, z.Name)
				}
			}
			seen[addr] = len(in.Endpoints)
			in.Endpoints = append(in.Endpoints, ep)
		}
	}
	return in, true
}

func serviceFromObject(svc *corev1.Service) (Service, bool) {
	if _, ok := svc.Labels[labelServiceProxyName]; ok {
		return Service{}, false
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return Service{}, false
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return Service{}, false
	}
	s := Service{
		Namespace:     svc.Namespace,
		Name:          svc.Name,
		ClusterIPs:    parseAddrs(svc.Spec.ClusterIPs),
		ExternalIPs:   parseAddrs(svc.Spec.ExternalIPs),
		ExternalLocal: svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
		InternalLocal: svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
	}
	if len(s.ClusterIPs) == 0 {
		s.ClusterIPs = parseAddrs([]string{svc.Spec.ClusterIP})
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy {
				continue // the load balancer proxies; traffic arrives at the node, not the VIP
			}
			s.LoadBalancerIPs = append(s.LoadBalancerIPs, parseAddrs([]string{ing.IP})...)
		}
		for _, r := range svc.Spec.LoadBalancerSourceRanges {
			if p, err := netip.ParsePrefix(strings.TrimSpace(r)); err == nil {
				s.LoadBalancerSourceRanges = append(s.LoadBalancerSourceRanges, p.Masked())
			}
		}
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		secs := int32(corev1.DefaultClientIPServiceAffinitySeconds)
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs = *c.ClientIP.TimeoutSeconds
		}
		s.SessionAffinityTimeout = time.Duration(secs) * time.Second
	}
	for _, p := range svc.Spec.Ports {
		proto := Protocol(strings.ToLower(string(p.Protocol)))
		if proto == "" {
			proto = TCP
		}
		if !slices.Contains([]Protocol{TCP, UDP, SCTP}, proto) {
			continue
		}
		sp := ServicePort{Name: p.Name, Protocol: proto, Port: p.Port, NodePort: p.NodePort}
		if s.ExternalLocal {
			sp.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
		}
		s.Ports = append(s.Ports, sp)
	}
	return s, true
}

func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}
