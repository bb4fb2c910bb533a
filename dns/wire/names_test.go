package wire

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/miekg/dns"
)

func TestNamesShareOneStringPerName(t *testing.T) {
	names := NewNames()
	first, err := ParseQuery(pack(t, query("Web.Default.svc.cluster.local.", dns.TypeA)), names)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseQuery(pack(t, query("web.default.SVC.cluster.local.", dns.TypeAAAA)), names)
	if err != nil {
		t.Fatal(err)
	}
	if first.Name != "web.default.svc.cluster.local." || again.Name != first.Name {
		t.Fatalf("names %q and %q, want both lower-cased and equal", first.Name, again.Name)
	}
	if unsafe.StringData(first.Name) != unsafe.StringData(again.Name) {
		t.Error("the second query of a name got a string of its own")
	}
	req := pack(t, query("web.default.svc.cluster.local.", dns.TypeA))
	if allocs := testing.AllocsPerRun(100, func() { _, _ = ParseQuery(req, names) }); allocs != 0 {
		t.Errorf("ParseQuery of a known name allocated %.0f times", allocs)
	}
}

func TestNamesStayBounded(t *testing.T) {
	names := NewNames()
	for i := range 3 * maxNames {
		q, err := ParseQuery(pack(t, query(fmt.Sprintf("name-%d.example.", i), dns.TypeA)), names)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("name-%d.example.", i); q.Name != want {
			t.Fatalf("name %q, want %q", q.Name, want)
		}
		if len(names.m) > maxNames {
			t.Fatalf("%d names held, want at most %d", len(names.m), maxNames)
		}
	}
}
