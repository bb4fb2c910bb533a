package hub

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestSlicesByService: slices are filed under the Service they name, sorted by name, replaced in
// place, moved when their label changes and forgotten with their last slice.
func TestSlicesByService(t *testing.T) {
	mk := func(name, svc, rv string) *EndpointSlice {
		return &EndpointSlice{objectMeta: objectMeta{Namespace: "ns", Name: name, resourceVersion: rv}, Service: svc}
	}
	names := func(s *slicesByService, key ServiceKey) []string {
		var out []string
		for _, sl := range s.of(key) {
			out = append(out, sl.Name+"@"+sl.resourceVersion)
		}
		return out
	}
	s := newSlicesByService()
	web2, web1, mine := mk("web-2", "web", "1"), mk("web-1", "web", "1"), mk("mine", "", "1")
	s.replace(nil, web2)
	s.replace(nil, web1)
	s.replace(nil, mine)
	if diff := cmp.Diff([]string{"web-1@1", "web-2@1"}, names(s, keyWeb)); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	s.replace(web1, mk("web-1", "web", "2"))
	if diff := cmp.Diff([]string{"web-1@2", "web-2@1"}, names(s, keyWeb)); diff != "" {
		t.Errorf("updated (-want +got):\n%s", diff)
	}
	s.replace(web2, mk("web-2", "api", "2"))
	if diff := cmp.Diff([]string{"web-1@2"}, names(s, keyWeb)); diff != "" {
		t.Errorf("moved away (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"web-2@2"}, names(s, keyAPI)); diff != "" {
		t.Errorf("moved in (-want +got):\n%s", diff)
	}
	s.replace(mk("web-1", "web", "2"), nil)
	got := s.services()
	slices.SortFunc(got, compareKeys)
	if diff := cmp.Diff([]ServiceKey{keyAPI}, got); diff != "" {
		t.Errorf("services after the last slice of web went (-want +got):\n%s", diff)
	}
	list := s.of(keyAPI)
	list[0] = nil
	if s.of(keyAPI)[0] == nil {
		t.Error("of returned the hub's own list")
	}
}
