package hub

import (
	"net/netip"
	"strings"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The hub caches Services and EndpointSlices in compact types of its own rather than as API
// objects: every node holds every Service and endpoint of the cluster, and the API types carry
// metadata nobody here reads, a pointer per optional field and addresses as text. The informers'
// transforms convert each object as it arrives. Cached values are shared by every reader and
// never change: a new version of an object replaces its value.

// objectMeta is what the hub keeps of an object's metadata. It satisfies metav1.Object for
// client-go's key and index functions, which read the namespace, the name and the resource
// version; the embedded interface is nil, so any other accessor panics instead of answering for
// metadata that was dropped.
type objectMeta struct {
	metav1.Object
	Namespace, Name string
	resourceVersion string
}

func metaOf(m *metav1.ObjectMeta) objectMeta {
	return objectMeta{Namespace: m.Namespace, Name: m.Name, resourceVersion: m.ResourceVersion}
}

func (m *objectMeta) GetNamespace() string       { return m.Namespace }
func (m *objectMeta) GetName() string            { return m.Name }
func (m *objectMeta) GetResourceVersion() string { return m.resourceVersion }

// LabelServiceProxyName marks a Service that another proxy than the default one handles.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Service is what the hub keeps of a Service: the fields the proxy and the DNS server read.
// What most Services leave unset sits behind one pointer, read through methods.
type Service struct {
	objectMeta
	Type corev1.ServiceType
	// ClusterIPs are spec.clusterIPs, or spec.clusterIP for an object older than dual stack;
	// empty while none is allocated and for a headless Service.
	ClusterIPs               []netip.Addr
	Ports                    []ServicePort
	Headless                 bool // spec.clusterIP: None
	ExternalTrafficLocal     bool // externalTrafficPolicy: Local
	InternalTrafficLocal     bool // internalTrafficPolicy: Local
	PublishNotReadyAddresses bool
	OtherProxy               bool // labelled LabelServiceProxyName: not ours to program
	rare                     *serviceRare
}

// serviceRare holds a Service's seldom-set fields.
type serviceRare struct {
	externalName        string
	externalIPs         []netip.Addr
	loadBalancerIPs     []netip.Addr
	sourceRanges        []netip.Prefix
	healthCheckNodePort int32
	affinityTimeout     time.Duration
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string
	Protocol corev1.Protocol // TCP when the object leaves it out
	Port     int32
	NodePort int32 // 0: none
}

// ExternalName is the target of an ExternalName Service.
func (s *Service) ExternalName() string {
	if s.rare == nil {
		return ""
	}
	return s.rare.externalName
}

// ExternalIPs are spec.externalIPs.
func (s *Service) ExternalIPs() []netip.Addr {
	if s.rare == nil {
		return nil
	}
	return s.rare.externalIPs
}

// LoadBalancerIPs are the ingress IPs of the status, except those of ipMode Proxy: such a load
// balancer proxies the traffic, which then arrives at a node address, not at its IP.
func (s *Service) LoadBalancerIPs() []netip.Addr {
	if s.rare == nil {
		return nil
	}
	return s.rare.loadBalancerIPs
}

// LoadBalancerSourceRanges are spec.loadBalancerSourceRanges.
func (s *Service) LoadBalancerSourceRanges() []netip.Prefix {
	if s.rare == nil {
		return nil
	}
	return s.rare.sourceRanges
}

// HealthCheckNodePort is spec.healthCheckNodePort; 0 for none.
func (s *Service) HealthCheckNodePort() int32 {
	if s.rare == nil {
		return 0
	}
	return s.rare.healthCheckNodePort
}

// SessionAffinityTimeout is the timeout of ClientIP affinity; zero without affinity.
func (s *Service) SessionAffinityTimeout() time.Duration {
	if s.rare == nil {
		return 0
	}
	return s.rare.affinityTimeout
}

// ServiceOf converts a Service for the cache.
func ServiceOf(s *corev1.Service) *Service {
	out := &Service{
		objectMeta:               metaOf(&s.ObjectMeta),
		Type:                     canonicalServiceType(s.Spec.Type),
		Headless:                 s.Spec.ClusterIP == corev1.ClusterIPNone,
		ExternalTrafficLocal:     s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
		InternalTrafficLocal:     s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		PublishNotReadyAddresses: s.Spec.PublishNotReadyAddresses,
	}
	_, out.OtherProxy = s.Labels[LabelServiceProxyName]
	if !out.Headless {
		ips := s.Spec.ClusterIPs
		if len(ips) == 0 && s.Spec.ClusterIP != "" {
			ips = []string{s.Spec.ClusterIP}
		}
		out.ClusterIPs = parseAddrs(ips)
	}
	if len(s.Spec.Ports) > 0 {
		out.Ports = make([]ServicePort, 0, len(s.Spec.Ports))
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, ServicePort{Name: p.Name, Protocol: canonicalProtocol(p.Protocol), Port: p.Port, NodePort: p.NodePort})
	}
	rare := serviceRare{
		externalName:        s.Spec.ExternalName,
		externalIPs:         parseAddrs(s.Spec.ExternalIPs),
		healthCheckNodePort: s.Spec.HealthCheckNodePort,
	}
	for _, ing := range s.Status.LoadBalancer.Ingress {
		if ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy {
			continue
		}
		if a, ok := parseAddr(ing.IP); ok {
			rare.loadBalancerIPs = append(rare.loadBalancerIPs, a)
		}
	}
	for _, r := range s.Spec.LoadBalancerSourceRanges {
		if p, err := netip.ParsePrefix(strings.TrimSpace(r)); err == nil {
			rare.sourceRanges = append(rare.sourceRanges, p)
		}
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		secs := int32(corev1.DefaultClientIPServiceAffinitySeconds)
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs = *c.ClientIP.TimeoutSeconds
		}
		rare.affinityTimeout = time.Duration(secs) * time.Second
	}
	if rare.externalName != "" || rare.externalIPs != nil || rare.loadBalancerIPs != nil || rare.sourceRanges != nil ||
		rare.healthCheckNodePort != 0 || rare.affinityTimeout != 0 {
		out.rare = &rare
	}
	return out
}

// EndpointSlice is what the hub keeps of an EndpointSlice.
type EndpointSlice struct {
	objectMeta
	// Service is the kubernetes.io/service-name label: the Service the slice belongs to. Slices
	// without it ("") are managed by someone else for their own purpose.
	Service string
	// TriggerTime is the endpoints.kubernetes.io/last-change-trigger-time annotation: when the
	// change that led to this version happened, as the endpoint controllers record it; zero when
	// unknown.
	TriggerTime time.Time
	AddressType discoveryv1.AddressType
	Ports       []EndpointPort // those with a port number
	// Endpoints are those with an address; an FQDN slice keeps none, as nobody here reads them.
	Endpoints []Endpoint
}

// EndpointPort is one port of an EndpointSlice's endpoints.
type EndpointPort struct {
	Name     string // "" for an unnamed port
	Protocol corev1.Protocol
	Port     int32
}

// Endpoint is one endpoint of an EndpointSlice. At 100,000 endpoints every byte of it counts a
// tenth of a megabyte on every node: it keeps what the proxy and the DNS server read in 48 bytes,
// with what few endpoints have behind one pointer.
type Endpoint struct {
	Addr        netip.Addr // the first address, the one a proxy balances to, as kube-proxy does
	Ready       bool       // a nil condition counts as ready
	Serving     bool       // a nil condition counts as Ready
	Terminating bool
	node        unique.Handle[string] // interned: a cluster has far fewer nodes than endpoints
	rare        *endpointRare         // nil when all its fields are empty
}

// endpointRare holds an endpoint's seldom-set fields.
type endpointRare struct {
	hostname  string
	zoneHints []string
	nodeHints []string
	addrs     []netip.Addr // every address, when there are more than one
}

// NodeName is the node the endpoint runs on, "" when unknown.
func (e *Endpoint) NodeName() string {
	if e.node == (unique.Handle[string]{}) {
		return ""
	}
	return e.node.Value()
}

// Hostname is the endpoint's hostname, "" when it has none.
func (e *Endpoint) Hostname() string {
	if e.rare == nil {
		return ""
	}
	return e.rare.hostname
}

// ZoneHints are the zones the endpoint should serve (hints.forZones).
func (e *Endpoint) ZoneHints() []string {
	if e.rare == nil {
		return nil
	}
	return e.rare.zoneHints
}

// NodeHints are the nodes the endpoint should serve (hints.forNodes, which the endpointslice
// controller writes for trafficDistribution: PreferSameNode).
func (e *Endpoint) NodeHints() []string {
	if e.rare == nil {
		return nil
	}
	return e.rare.nodeHints
}

// Addrs are all the endpoint's addresses, Addr first.
func (e *Endpoint) Addrs() []netip.Addr {
	if e.rare != nil && len(e.rare.addrs) > 0 {
		return e.rare.addrs
	}
	return []netip.Addr{e.Addr}
}

// EndpointSliceOf converts an EndpointSlice for the cache.
func EndpointSliceOf(s *discoveryv1.EndpointSlice) *EndpointSlice {
	out := &EndpointSlice{
		objectMeta:  metaOf(&s.ObjectMeta),
		Service:     s.Labels[discoveryv1.LabelServiceName],
		TriggerTime: triggerTime(s.Annotations),
		AddressType: canonicalAddressType(s.AddressType),
	}
	for _, p := range s.Ports {
		if p.Port == nil {
			continue
		}
		ep := EndpointPort{Port: *p.Port, Protocol: corev1.ProtocolTCP}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Protocol != nil {
			ep.Protocol = canonicalProtocol(*p.Protocol)
		}
		out.Ports = append(out.Ports, ep)
	}
	if out.AddressType == discoveryv1.AddressTypeFQDN {
		return out
	}
	// Exactly as many as there are: the cache keeps every slice of the cluster.
	n := 0
	for _, e := range s.Endpoints {
		if _, ok := firstAddr(e.Addresses); ok {
			n++
		}
	}
	if n > 0 {
		out.Endpoints = make([]Endpoint, 0, n)
	}
	for _, e := range s.Endpoints {
		if ep, ok := endpointOf(&e); ok {
			out.Endpoints = append(out.Endpoints, ep)
		}
	}
	return out
}

// endpointOf converts an endpoint; false when it has no address.
func endpointOf(e *discoveryv1.Endpoint) (Endpoint, bool) {
	addr, ok := firstAddr(e.Addresses)
	if !ok {
		return Endpoint{}, false
	}
	ready := e.Conditions.Ready == nil || *e.Conditions.Ready
	serving := ready
	if e.Conditions.Serving != nil {
		serving = *e.Conditions.Serving
	}
	out := Endpoint{
		Addr:        addr,
		Ready:       ready,
		Serving:     serving,
		Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	if e.NodeName != nil && *e.NodeName != "" {
		out.node = unique.Make(*e.NodeName)
	}
	var rare endpointRare
	if e.Hostname != nil {
		rare.hostname = *e.Hostname
	}
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			rare.zoneHints = append(rare.zoneHints, z.Name)
		}
		for _, n := range e.Hints.ForNodes {
			rare.nodeHints = append(rare.nodeHints, n.Name)
		}
	}
	if len(e.Addresses) > 1 {
		rare.addrs = parseAddrs(e.Addresses)
	}
	if rare.hostname != "" || len(rare.zoneHints) > 0 || len(rare.nodeHints) > 0 || len(rare.addrs) > 1 {
		out.rare = &rare
	}
	return out, true
}

// firstAddr parses an endpoint's first address; the API allows several, and a proxy uses the
// first.
func firstAddr(addrs []string) (netip.Addr, bool) {
	if len(addrs) == 0 {
		return netip.Addr{}, false
	}
	return parseAddr(addrs[0])
}

// triggerTime reads endpoints.kubernetes.io/last-change-trigger-time; zero when absent or
// malformed.
func triggerTime(annotations map[string]string) time.Time {
	v, ok := annotations[corev1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}
	}
	return t
}

func parseAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// parseAddrs parses a list of addresses and drops malformed ones; nil when none is left.
func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, ok := parseAddr(s); ok {
			out = append(out, a)
		}
	}
	return out
}

// The canonical* functions return the package constant for a known value: a decoded string is
// a fresh allocation per object, the constant none.

func canonicalProtocol(p corev1.Protocol) corev1.Protocol {
	switch p {
	case "", corev1.ProtocolTCP:
		return corev1.ProtocolTCP
	case corev1.ProtocolUDP:
		return corev1.ProtocolUDP
	case corev1.ProtocolSCTP:
		return corev1.ProtocolSCTP
	}
	return p
}

func canonicalServiceType(t corev1.ServiceType) corev1.ServiceType {
	switch t {
	case corev1.ServiceTypeClusterIP:
		return corev1.ServiceTypeClusterIP
	case corev1.ServiceTypeNodePort:
		return corev1.ServiceTypeNodePort
	case corev1.ServiceTypeLoadBalancer:
		return corev1.ServiceTypeLoadBalancer
	case corev1.ServiceTypeExternalName:
		return corev1.ServiceTypeExternalName
	}
	return t
}

func canonicalAddressType(t discoveryv1.AddressType) discoveryv1.AddressType {
	switch t {
	case discoveryv1.AddressTypeIPv4:
		return discoveryv1.AddressTypeIPv4
	case discoveryv1.AddressTypeIPv6:
		return discoveryv1.AddressTypeIPv6
	case discoveryv1.AddressTypeFQDN:
		return discoveryv1.AddressTypeFQDN
	}
	return t
}
