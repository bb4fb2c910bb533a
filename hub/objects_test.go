package hub

import (
	"net/netip"
	"slices"
	"testing"
	"time"
	"unique"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// cmpCached compares cached values field by field, the resource version aside: the fake API
// server sets its own.
var cmpCached = cmp.Options{
	cmp.AllowUnexported(Service{}, serviceRare{}, EndpointSlice{}, objectMeta{}, Endpoint{}, endpointRare{}),
	cmp.Comparer(func(a, b unique.Handle[string]) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.IgnoreFields(objectMeta{}, "resourceVersion"),
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// TestServiceOf: the cached Service holds every field the proxy and the DNS server read, parsed
// and resolved, and nothing else.
func TestServiceOf(t *testing.T) {
	meta := metav1.ObjectMeta{Namespace: "ns", Name: "web", ResourceVersion: "7",
		Labels:        map[string]string{"app": "web"},
		Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
	}
	for _, tc := range []struct {
		name string
		in   corev1.Service
		want Service
	}{
		{"every field the proxy reads", corev1.Service{ObjectMeta: meta,
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
				ExternalIPs:              []string{"192.0.2.1", "bogus"},
				LoadBalancerSourceRanges: []string{" 203.0.113.0/24 ", "198.51.100.7/32"},
				ExternalTrafficPolicy:    corev1.ServiceExternalTrafficPolicyLocal,
				InternalTrafficPolicy:    ptr.To(corev1.ServiceInternalTrafficPolicyLocal),
				HealthCheckNodePort:      32000,
				SessionAffinity:          corev1.ServiceAffinityClientIP,
				SessionAffinityConfig:    &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}},
				Ports: []corev1.ServicePort{
					{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080, AppProtocol: ptr.To("http")},
					{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
					{Name: "sig", Port: 3868}, // protocol left out: TCP
				},
			},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{
				{IP: "198.51.100.8"},
				{IP: "198.51.100.9", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)},
				{Hostname: "lb.example.com"},
			}}},
		}, Service{
			objectMeta: objectMeta{Namespace: "ns", Name: "web"},
			Type:       corev1.ServiceTypeLoadBalancer, ClusterIPs: addrs("10.96.0.10", "fd00:96::10"),
			Ports: []ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080},
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
				{Name: "sig", Protocol: corev1.ProtocolTCP, Port: 3868},
			},
			ExternalTrafficLocal: true, InternalTrafficLocal: true,
			rare: &serviceRare{
				externalIPs:         addrs("192.0.2.1"),
				loadBalancerIPs:     addrs("198.51.100.8"),
				sourceRanges:        []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("198.51.100.7/32")},
				healthCheckNodePort: 32000, affinityTimeout: time.Minute,
			},
		}},
		{"written before dual stack; ClientIP affinity with the default timeout", corev1.Service{ObjectMeta: meta,
			Spec: corev1.ServiceSpec{ClusterIP: "::ffff:10.96.0.11", SessionAffinity: corev1.ServiceAffinityClientIP},
		}, Service{objectMeta: objectMeta{Namespace: "ns", Name: "web"}, ClusterIPs: addrs("10.96.0.11"), rare: &serviceRare{affinityTimeout: 3 * time.Hour}}},
		{"headless, publishing not-ready addresses", corev1.Service{ObjectMeta: meta,
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: corev1.ClusterIPNone, ClusterIPs: []string{corev1.ClusterIPNone}, PublishNotReadyAddresses: true},
		}, Service{objectMeta: objectMeta{Namespace: "ns", Name: "web"}, Type: corev1.ServiceTypeClusterIP, Headless: true, PublishNotReadyAddresses: true}},
		{"external name", corev1.Service{ObjectMeta: meta,
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"},
		}, Service{objectMeta: objectMeta{Namespace: "ns", Name: "web"}, Type: corev1.ServiceTypeExternalName, rare: &serviceRare{externalName: "example.com"}}},
		{"another proxy's", corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Labels: map[string]string{LabelServiceProxyName: ""}},
			Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.12"},
		}, Service{objectMeta: objectMeta{Namespace: "ns", Name: "web"}, ClusterIPs: addrs("10.96.0.12"), OtherProxy: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ServiceOf(&tc.in)
			if diff := cmp.Diff(&tc.want, got, cmpCached); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got.GetResourceVersion() != tc.in.ResourceVersion {
				t.Errorf("resource version %q, want %q", got.GetResourceVersion(), tc.in.ResourceVersion)
			}
		})
	}
	var plain Service
	if plain.ExternalName() != "" || plain.ExternalIPs() != nil || plain.LoadBalancerIPs() != nil ||
		plain.LoadBalancerSourceRanges() != nil || plain.HealthCheckNodePort() != 0 || plain.SessionAffinityTimeout() != 0 {
		t.Error("a Service without the seldom-set fields reads some of them as set")
	}
}

// TestEndpointSliceOf: the cached slice keeps what the proxy and the DNS server read of each
// endpoint, conditions resolved as the API defines them, in a list of its own length.
func TestEndpointSliceOf(t *testing.T) {
	t1 := time.Date(2026, 5, 1, 10, 0, 0, 100, time.UTC)
	in := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-abc", ResourceVersion: "7",
			Labels:          map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
			Annotations:     map[string]string{corev1.EndpointsLastChangeTriggerTime: t1.Format(time.RFC3339Nano)},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "web"}},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080), AppProtocol: ptr.To("http")},
			{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To[int32](53)},
			{Port: ptr.To[int32](9000)}, // no name, no protocol: "" and TCP
			{Name: ptr.To("any")},       // no port: useless
		},
		Endpoints: append(make([]discoveryv1.Endpoint, 0, 8),
			discoveryv1.Endpoint{ // nil conditions: ready and serving
				Addresses: []string{"10.244.1.5"}, NodeName: ptr.To("node-1"), Zone: ptr.To("zone-a"),
				TargetRef:          &corev1.ObjectReference{Kind: "Pod", Name: "web-0"},
				DeprecatedTopology: map[string]string{"kubernetes.io/hostname": "node-1"},
			},
			discoveryv1.Endpoint{
				Addresses:  []string{"10.244.2.5", "10.244.2.6"},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)},
				Hostname:   ptr.To("web-1"), NodeName: ptr.To("node-1"),
				Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}, {Name: "zone-b"}},
					ForNodes: []discoveryv1.ForNode{{Name: "node-1"}}},
			},
			discoveryv1.Endpoint{ // not ready: not serving either
				Addresses: []string{"::ffff:10.244.3.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)},
			},
			discoveryv1.Endpoint{Addresses: nil},                   // no address
			discoveryv1.Endpoint{Addresses: []string{"not-an-ip"}}, // malformed
		),
	}
	want := &EndpointSlice{
		objectMeta:  objectMeta{Namespace: "ns", Name: "web-abc"},
		Service:     "web",
		TriggerTime: t1,
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []EndpointPort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
			{Protocol: corev1.ProtocolTCP, Port: 9000},
		},
		Endpoints: []Endpoint{
			{Addr: netip.MustParseAddr("10.244.1.5"), Ready: true, Serving: true, node: unique.Make("node-1")},
			{Addr: netip.MustParseAddr("10.244.2.5"), Serving: true, Terminating: true, node: unique.Make("node-1"),
				rare: &endpointRare{hostname: "web-1", zoneHints: []string{"zone-a", "zone-b"}, nodeHints: []string{"node-1"}, addrs: addrs("10.244.2.5", "10.244.2.6")}},
			{Addr: netip.MustParseAddr("10.244.3.5")},
		},
	}
	got := EndpointSliceOf(in)
	if diff := cmp.Diff(want, got, cmpCached); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if cap(got.Endpoints) != len(got.Endpoints) {
		t.Errorf("endpoints keep a capacity of %d for %d", cap(got.Endpoints), len(got.Endpoints))
	}
	if got.Endpoints[0].node != got.Endpoints[1].node {
		t.Error("the node name is not interned")
	}
	first, second := got.Endpoints[0], got.Endpoints[1]
	if first.NodeName() != "node-1" || first.Hostname() != "" || first.ZoneHints() != nil || !slices.Equal(first.Addrs(), addrs("10.244.1.5")) {
		t.Errorf("accessors of the first endpoint: %q %q %v %v", first.NodeName(), first.Hostname(), first.ZoneHints(), first.Addrs())
	}
	if second.Hostname() != "web-1" || !slices.Equal(second.Addrs(), addrs("10.244.2.5", "10.244.2.6")) {
		t.Errorf("accessors of the second endpoint: %q %v", second.Hostname(), second.Addrs())
	}
	if (&Endpoint{}).NodeName() != "" {
		t.Error("an endpoint without a node has a node name")
	}

	fqdn := EndpointSliceOf(&discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeFQDN,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}}})
	if fqdn.AddressType != discoveryv1.AddressTypeFQDN || fqdn.Endpoints != nil {
		t.Errorf("FQDN slice cached as %+v", fqdn)
	}
}
