package zone

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodenet/nodenet/hub"
)

// The fixtures follow CoreDNS's kubernetes plugin tests, so the cases below can be checked
// against its handler_test.go answer for answer.

// The fixtures are API objects in the form the hub caches them, as the zone is fed in the daemon.

func clusterIPService(ns, name string, ips []string, ports ...corev1.ServicePort) *hub.Service {
	return hub.ServiceOf(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ips[0], ClusterIPs: ips, Ports: ports},
	})
}

func headlessService(ns, name string, publishNotReady bool) *hub.Service {
	return hub.ServiceOf(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: corev1.ClusterIPNone, PublishNotReadyAddresses: publishNotReady},
	})
}

func externalService(ns, name, target string) *hub.Service {
	return hub.ServiceOf(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: target},
	})
}

func svcPort(name string, proto corev1.Protocol, n int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: n}
}

type ep struct {
	hostname string
	addr     string
	ready    *bool
}

func endpointSlice(ns, name string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...ep) *hub.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-" + strings.ToLower(string(family))},
		AddressType: family,
		Ports:       ports,
	}
	for _, e := range eps {
		d := discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready}}
		if e.hostname != "" {
			d.Hostname = &e.hostname
		}
		s.Endpoints = append(s.Endpoints, d)
	}
	return hub.EndpointSliceOf(s)
}

func ptr[T any](v T) *T { return &v }

func slicePort(name string, proto corev1.Protocol, n int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &n}
}

// testZone holds the Services of namespace testns (and one in other).
func testZone(t testing.TB) *Zone {
	t.Helper()
	z := New(Config{Domain: "cluster.local", TTL: 5, Nameservers: []netip.Addr{netip.MustParseAddr("169.254.20.10")},
		Now: func() time.Time { return time.Unix(1700000000, 0) }})
	http := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 80)}
	set := func(svc *hub.Service, slices ...*hub.EndpointSlice) {
		z.Set(svc.Namespace, svc.Name, svc, slices)
	}
	set(clusterIPService("testns", "svc1", []string{"10.0.0.1"}, svcPort("http", corev1.ProtocolTCP, 80)),
		endpointSlice("testns", "svc1", discoveryv1.AddressTypeIPv4, http, ep{addr: "172.0.0.1"}))
	set(clusterIPService("testns", "svcempty", []string{"10.0.0.2"}, svcPort("http", corev1.ProtocolTCP, 80)))
	set(clusterIPService("testns", "svc6", []string{"1234:abcd::1"}, svcPort("http", corev1.ProtocolTCP, 80)))
	set(clusterIPService("testns", "svc-dual-stack", []string{"10.0.0.3", "10::3"}, svcPort("http", corev1.ProtocolTCP, 80)))
	set(clusterIPService("testns", "dns", []string{"10.0.0.10"}, svcPort("dns", corev1.ProtocolUDP, 53), svcPort("dns-tcp", corev1.ProtocolTCP, 53), svcPort("", corev1.ProtocolTCP, 9153)))
	set(headlessService("testns", "hdls1", false),
		endpointSlice("testns", "hdls1", discoveryv1.AddressTypeIPv4, http,
			ep{addr: "172.0.0.2"}, ep{addr: "172.0.0.3", ready: ptr(true)}, ep{hostname: "dup-name", addr: "172.0.0.4"}, ep{hostname: "dup-name", addr: "172.0.0.5"},
			ep{hostname: "not-ready", addr: "172.0.0.6", ready: ptr(false)}),
		endpointSlice("testns", "hdls1", discoveryv1.AddressTypeIPv6, http, ep{addr: "5678:abcd::1"}, ep{addr: "5678:abcd::2"}))
	set(headlessService("testns", "hdlsprtls", false), endpointSlice("testns", "hdlsprtls", discoveryv1.AddressTypeIPv4, nil, ep{addr: "172.0.0.20"}))
	set(headlessService("testns", "hdlsempty", false))
	set(headlessService("testns", "peers", true),
		endpointSlice("testns", "peers", discoveryv1.AddressTypeIPv4, http, ep{hostname: "db-0", addr: "172.0.1.1", ready: ptr(false)}))
	set(externalService("testns", "external", "ext.interwebs.test"))
	set(externalService("testns", "external-to-service", "svc1.testns.svc.cluster.local."))
	set(clusterIPService("other", "svc1", []string{"10.0.1.1"}, svcPort("http", corev1.ProtocolTCP, 80)))
	z.MarkSynced()
	return z
}

// Case is one query and the answer expected, records in zone-file syntax.
type Case struct {
	Qname             string
	Qtype             uint16
	Rcode             int
	Answer, Ns, Extra []string
	Alias             string
}

const soa = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1700000012 7200 1800 86400 5"

var cases = []Case{
	// 2.2 schema version
	{Qname: "dns-version.cluster.local.", Qtype: dns.TypeTXT, Answer: []string{`dns-version.cluster.local. 28800 IN TXT "1.1.0"`}},
	{Qname: "dns-version.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	// 2.3.1 A / AAAA of a Service with a cluster IP
	{Qname: "svc1.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"}},
	{Qname: "svcempty.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.2"}},
	{Qname: "svc1.testns.svc.cluster.local.", Qtype: dns.TypeAAAA, Ns: []string{soa}},
	{Qname: "svc6.testns.svc.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{"svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"}},
	{Qname: "svc-dual-stack.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3"}},
	{Qname: "svc-dual-stack.testns.svc.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{"svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"}},
	{Qname: "svc1.other.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"svc1.other.svc.cluster.local. 5 IN A 10.0.1.1"}},
	{Qname: "svc1.testns.svc.cluster.local.", Qtype: dns.TypeMX, Ns: []string{soa}},
	{Qname: "svc1.testns.svc.cluster.local.", Qtype: dns.TypeSOA, Ns: []string{soa}},
	// Names that do not exist.
	{Qname: "svc0.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "svc0.testns.svc.cluster.local.", Qtype: dns.TypeAAAA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "svc1.nons.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "bogusendpoint.svc0.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "172-0-0-1.svc1.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "a.b.svc1.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "foo.cluster.local.", Qtype: dns.TypeNS, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "foo.svc.cluster.local.", Qtype: dns.TypeNS, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	// The search path of a pod in testns looking up an external name: every step is NXDOMAIN.
	{Qname: "www.example.com.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "www.example.com.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "www.example.com.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	// A short name across namespaces ("svc1.testns" from a pod in other) is NXDOMAIN until the
	// search path reaches svc.cluster.local.
	{Qname: "svc1.testns.other.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	// Names that exist without records: NODATA.
	{Qname: "cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	{Qname: "svc.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	{Qname: "svc.cluster.local.", Qtype: dns.TypeNS, Ns: []string{soa}},
	{Qname: "pod.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	{Qname: "testns.svc.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	{Qname: "testns.svc.cluster.local.", Qtype: dns.TypeNS, Ns: []string{soa}},
	{Qname: "_tcp.svc1.testns.svc.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	{Qname: "_udp.svc1.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	// The apex.
	{Qname: "cluster.local.", Qtype: dns.TypeSOA, Answer: []string{soa}},
	{Qname: "cluster.local.", Qtype: dns.TypeNS, Answer: []string{"cluster.local. 5 IN NS ns.dns.cluster.local."}, Extra: []string{"ns.dns.cluster.local. 5 IN A 169.254.20.10"}},
	{Qname: "ns.dns.cluster.local.", Qtype: dns.TypeA, Answer: []string{"ns.dns.cluster.local. 5 IN A 169.254.20.10"}},
	{Qname: "ns.dns.cluster.local.", Qtype: dns.TypeAAAA, Ns: []string{soa}},
	// 2.3.2 SRV of named ports, Service with a cluster IP.
	{
		Qname: "_http._tcp.svc1.testns.svc.cluster.local.", Qtype: dns.TypeSRV,
		Answer: []string{"_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."},
		Extra:  []string{"svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"},
	},
	{
		Qname: "_http._tcp.svc-dual-stack.testns.svc.cluster.local.", Qtype: dns.TypeSRV,
		Answer: []string{"_http._tcp.svc-dual-stack.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc-dual-stack.testns.svc.cluster.local."},
		Extra:  []string{"svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3", "svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"},
	},
	{
		Qname: "_dns._udp.dns.testns.svc.cluster.local.", Qtype: dns.TypeSRV,
		Answer: []string{"_dns._udp.dns.testns.svc.cluster.local. 5 IN SRV 0 100 53 dns.testns.svc.cluster.local."},
		Extra:  []string{"dns.testns.svc.cluster.local. 5 IN A 10.0.0.10"},
	},
	{Qname: "_dns._tcp.dns.testns.svc.cluster.local.", Qtype: dns.TypeSRV, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "_http._tcp.svc1.testns.svc.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	{Qname: "_https._tcp.svc1.testns.svc.cluster.local.", Qtype: dns.TypeSRV, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	// SRV of the Service name itself: every port, named or not, as CoreDNS answers it.
	{
		Qname: "dns.testns.svc.cluster.local.", Qtype: dns.TypeSRV,
		Answer: []string{
			"dns.testns.svc.cluster.local. 5 IN SRV 0 33 53 dns.testns.svc.cluster.local.",
			"dns.testns.svc.cluster.local. 5 IN SRV 0 33 53 dns.testns.svc.cluster.local.",
			"dns.testns.svc.cluster.local. 5 IN SRV 0 33 9153 dns.testns.svc.cluster.local.",
		},
		Extra: []string{"dns.testns.svc.cluster.local. 5 IN A 10.0.0.10"},
	},
	// 2.4.1 headless Services: the ready endpoints' addresses.
	{Qname: "hdls1.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{
		"hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2", "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
		"hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4", "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
	}},
	{Qname: "hdls1.testns.svc.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{
		"hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1", "hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
	}},
	{Qname: "hdlsprtls.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"}},
	{Qname: "hdlsempty.testns.svc.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	// Endpoints by hostname, else by their dashed address.
	{Qname: "172-0-0-2.hdls1.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"}},
	{Qname: "172-0-0-20.hdlsprtls.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"172-0-0-20.hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"}},
	{Qname: "dup-name.hdls1.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{
		"dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4", "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
	}},
	{Qname: "5678-abcd--2.hdls1.testns.svc.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{"5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"}},
	{Qname: "5678-abcd--2.hdls1.testns.svc.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
	{Qname: "bogusendpoint.hdls1.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	// Not-ready endpoints are left out, unless the Service publishes them.
	{Qname: "not-ready.hdls1.testns.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "db-0.peers.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"db-0.peers.testns.svc.cluster.local. 5 IN A 172.0.1.1"}},
	// 2.4.2 SRV of a headless Service: one record per endpoint.
	{
		Qname: "_http._tcp.hdls1.testns.svc.cluster.local.", Qtype: dns.TypeSRV,
		Answer: []string{
			"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 20 80 172-0-0-2.hdls1.testns.svc.cluster.local.",
			"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 20 80 172-0-0-3.hdls1.testns.svc.cluster.local.",
			"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 20 80 5678-abcd--1.hdls1.testns.svc.cluster.local.",
			"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 20 80 5678-abcd--2.hdls1.testns.svc.cluster.local.",
			"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 20 80 dup-name.hdls1.testns.svc.cluster.local.",
		},
		Extra: []string{
			"172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
			"172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
			"5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
			"5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
			"dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
			"dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
		},
	},
	// 2.5 ExternalName: a CNAME, whose target the server resolves further.
	{Qname: "external.testns.svc.cluster.local.", Qtype: dns.TypeCNAME, Answer: []string{"external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."}},
	{Qname: "external.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."}, Alias: "ext.interwebs.test."},
	{Qname: "external-to-service.testns.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{"external-to-service.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local."}, Alias: "svc1.testns.svc.cluster.local."},
	{Qname: "endpoint.external.testns.svc.cluster.local.", Qtype: dns.TypeCNAME, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "_http._tcp.external.testns.svc.cluster.local.", Qtype: dns.TypeSRV, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	// Pods, by the address their name spells, in any namespace.
	{Qname: "10-244-1-5.testns.pod.cluster.local.", Qtype: dns.TypeA, Answer: []string{"10-244-1-5.testns.pod.cluster.local. 5 IN A 10.244.1.5"}},
	{Qname: "fd00-10-244--5.testns.pod.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{"fd00-10-244--5.testns.pod.cluster.local. 5 IN AAAA fd00:10:244::5"}},
	{Qname: "10-244-1-5.testns.pod.cluster.local.", Qtype: dns.TypeAAAA, Ns: []string{soa}},
	{Qname: "10-244-1.testns.pod.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "10-244-1-300.testns.pod.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa}},
	{Qname: "testns.pod.cluster.local.", Qtype: dns.TypeA, Ns: []string{soa}},
}

func TestAnswer(t *testing.T) {
	z := testZone(t)
	for _, tc := range cases {
		t.Run(dns.TypeToString[tc.Qtype]+" "+tc.Qname, func(t *testing.T) {
			got := z.Answer(tc.Qname, tc.Qtype)
			checkResponse(t, tc, got)
		})
	}
}

func checkResponse(t *testing.T, tc Case, got Response) {
	t.Helper()
	want := struct {
		Rcode             int
		Answer, Ns, Extra []string
		Alias             string
	}{tc.Rcode, normalize(t, tc.Answer), normalize(t, tc.Ns), normalize(t, tc.Extra), tc.Alias}
	have := want
	have.Rcode, have.Alias = got.Rcode, got.Alias
	have.Answer, have.Ns, have.Extra = rrStrings(got.Answer), rrStrings(got.Ns), rrStrings(got.Extra)
	if diff := cmp.Diff(want, have); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	if !got.AuthoritativeAnswer {
		t.Error("answer is not authoritative")
	}
}

// normalize parses records written by hand and prints them the way miekg/dns does.
func normalize(t *testing.T, rrs []string) []string {
	t.Helper()
	var out []string
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("bad record %q in the test: %v", s, err)
		}
		out = append(out, rr.String())
	}
	slices.Sort(out)
	return out
}

func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, rr.String())
	}
	slices.Sort(out)
	return out
}
