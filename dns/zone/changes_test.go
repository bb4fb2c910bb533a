package zone

import (
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
)

func TestNotSynced(t *testing.T) {
	z := New(Config{Domain: "cluster.local", TTL: 5})
	z.Set("default", "web", clusterIPService("default", "web", []string{"10.96.0.20"}), nil)
	if r := z.Answer("nope.default.svc.cluster.local.", dns.TypeA); r.Rcode != dns.RcodeServerFailure || !r.NotSynced {
		t.Errorf("before the caches synced: %+v, want SERVFAIL", r)
	}
	z.MarkSynced()
	if r := z.Answer("nope.default.svc.cluster.local.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("after: rcode %d, want NXDOMAIN", r.Rcode)
	}
}

func TestOutsideZone(t *testing.T) {
	z := testZone(t)
	for _, name := range []string{"example.com.", "cluster.local.example.com.", "xcluster.local.", "."} {
		if r := z.Answer(name, dns.TypeA); !r.OutsideZone {
			t.Errorf("%s: %+v, want OutsideZone", name, r)
		}
	}
}

// TestChanges follows one Service through creation, an update and deletion: every answer is the
// state of the moment, and the namespace's name goes with its last Service.
func TestChanges(t *testing.T) {
	z := New(Config{Domain: "Cluster.Local.", TTL: 5})
	z.MarkSynced()
	expect := func(name string, qtype uint16, rcode int, answers int) {
		t.Helper()
		r := z.Answer(name, qtype)
		if r.Rcode != rcode || len(r.Answer) != answers {
			t.Errorf("%s %s: rcode %d with %d answers, want %d with %d", name, dns.TypeToString[qtype], r.Rcode, len(r.Answer), rcode, answers)
		}
	}
	expect("web.shop.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, 0)
	z.Set("Shop", "Web", clusterIPService("Shop", "Web", []string{"10.96.0.20"}, svcPort("http", corev1.ProtocolTCP, 80)), nil)
	expect("web.shop.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, 1)
	expect("shop.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, 0)
	if r, ok := z.Reverse("20.0.96.10.in-addr.arpa.", dns.TypePTR); !ok || len(r.Answer) != 1 {
		t.Errorf("PTR of the cluster IP: %+v %v", r, ok)
	}
	z.Set("shop", "web", clusterIPService("shop", "web", []string{"10.96.0.21"}), nil)
	if r := z.Answer("web.shop.svc.cluster.local.", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.96.0.21" {
		t.Errorf("after the update: %v", r.Answer)
	}
	if _, ok := z.Reverse("20.0.96.10.in-addr.arpa.", dns.TypePTR); ok {
		t.Error("the old cluster IP still has a PTR record")
	}
	z.Set("shop", "web", nil, nil)
	expect("web.shop.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, 0)
	expect("shop.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, 0)
	if _, ok := z.Reverse("21.0.96.10.in-addr.arpa.", dns.TypePTR); ok {
		t.Error("the deleted Service still has a PTR record")
	}
}
