package kubeapi

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/rest"
)

func sliceList() *discoveryv1.EndpointSliceList {
	list := &discoveryv1.EndpointSliceList{
		TypeMeta: metav1.TypeMeta{Kind: "EndpointSliceList", APIVersion: "discovery.k8s.io/v1"},
		ListMeta: metav1.ListMeta{ResourceVersion: "42"},
	}
	for _, name := range []string{"web-1", "web-2", "db-1"} {
		node := "node-" + name
		list.Items = append(list.Items, discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "4" + name[len(name)-1:]},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.7"}, NodeName: &node}},
		})
	}
	return list
}

// serveList answers every request with list, encoded by enc as contentType.
func serveList(t *testing.T, list runtime.Object, enc runtime.Encoder, contentType string) *Client {
	t.Helper()
	var body bytes.Buffer
	if err := enc.Encode(list, &body); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Write(body.Bytes())
	}))
	t.Cleanup(srv.Close)
	return daemonClient(t, srv.URL)
}

// TestListEach: each item reaches the callback whole and in order, as the server encoded it,
// with the list's resource version; protobuf is decoded item by item, JSON whole.
func TestListEach(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, contentType string
		enc               runtime.Encoder
	}{
		{"protobuf", runtime.ContentTypeProtobuf, protobuf.NewSerializer(scheme, scheme)},
		{"json", runtime.ContentTypeJSON, json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := sliceList()
			c := serveList(t, want, tc.enc, tc.contentType)
			var got []discoveryv1.EndpointSlice
			lm, err := c.EndpointSlices().(*ItemLister).ListEach(context.Background(), metav1.ListOptions{}, func(o runtime.Object) error {
				s := o.(*discoveryv1.EndpointSlice)
				s.TypeMeta = metav1.TypeMeta{} // JSON items carry none either way
				got = append(got, *s)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if lm.ResourceVersion != "42" {
				t.Errorf("list resource version %q, want 42", lm.ResourceVersion)
			}
			if diff := cmp.Diff(want.Items, got); diff != "" {
				t.Errorf("items (-want +got):\n%s", diff)
			}
		})
	}
}

// A failing callback ends the list with its error; a failed request is an error.
func TestListEachErrors(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := serveList(t, sliceList(), protobuf.NewSerializer(scheme, scheme), runtime.ContentTypeProtobuf)
	stop := errorString("enough")
	n := 0
	_, err := c.EndpointSlices().(*ItemLister).ListEach(context.Background(), metav1.ListOptions{}, func(runtime.Object) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("callback error: got %v after %d items, want %v after 1", err, n, stop)
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","message":"no list for you","code":403}`))
	}))
	defer srv.Close()
	bad, err := New(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Services().(*ItemLister).ListEach(context.Background(), metav1.ListOptions{}, func(runtime.Object) error { return nil }); err == nil || !bytes.Contains([]byte(err.Error()), []byte("no list for you")) {
		t.Errorf("forbidden list: %v, want the server's message", err)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
