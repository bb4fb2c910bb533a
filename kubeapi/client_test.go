package kubeapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// daemonClient is a client of host that asks as the daemon does: protobuf, JSON accepted.
func daemonClient(t *testing.T, host string) *Client {
	t.Helper()
	cfg := &rest.Config{Host: host}
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClient: each call reaches the path and sends the content type the API server expects, and
// the answers decode into the types the daemon reads.
func TestClient(t *testing.T) {
	var mu sync.Mutex
	var requests []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		requests = append(requests, fmt.Sprintf("%s %s?%s %s %s", r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), body))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/v1/nodes/node1":
			fmt.Fprint(w, `{"kind":"Node","apiVersion":"v1","metadata":{"name":"node1"},"spec":{"podCIDR":"10.244.1.0/24"}}`)
		case "/api/v1/nodes":
			fmt.Fprint(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[{"metadata":{"name":"node1"}}]}`)
		case "/api/v1/services":
			fmt.Fprint(w, `{"kind":"ServiceList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"namespace":"ns","name":"web"}}]}`)
		case "/apis/discovery.k8s.io/v1/endpointslices":
			fmt.Fprint(w, `{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{},"items":[{"metadata":{"namespace":"ns","name":"web-1"},"addressType":"IPv4","endpoints":[]}]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c := daemonClient(t, srv.URL)
	ctx := context.Background()

	node, err := c.GetNode(ctx, "node1")
	if err != nil || node.Spec.PodCIDR != "10.244.1.0/24" {
		t.Errorf("GetNode = %+v, %v", node, err)
	}
	if err := c.PatchNode(ctx, "node1", []byte(`{"metadata":{"annotations":{"a":"b"}}}`)); err != nil {
		t.Errorf("PatchNode: %v", err)
	}
	list := func(name string, obj runtime.Object, err error, items int) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		if n := len(itemsOf(obj)); n != items {
			t.Errorf("%s: %T with %d items, want %d", name, obj, n, items)
		}
	}
	obj, err := cache.ToListerWatcherWithContext(c.Node("node1")).ListWithContext(ctx, metav1.ListOptions{})
	list("Node", obj, err, 1)
	obj, err = cache.ToListerWatcherWithContext(c.Nodes()).ListWithContext(ctx, metav1.ListOptions{})
	list("Nodes", obj, err, 1)
	obj, err = cache.ToListerWatcherWithContext(c.Services()).ListWithContext(ctx, metav1.ListOptions{})
	list("Services", obj, err, 1)
	obj, err = cache.ToListerWatcherWithContext(c.EndpointSlices()).ListWithContext(ctx, metav1.ListOptions{})
	list("EndpointSlices", obj, err, 1)

	want := []string{
		"GET /api/v1/nodes/node1?  ",
		`PATCH /api/v1/nodes/node1? application/merge-patch+json {"metadata":{"annotations":{"a":"b"}}}`,
		"GET /api/v1/nodes?fieldSelector=metadata.name%3Dnode1  ",
		"GET /api/v1/nodes?  ",
		"GET /api/v1/services?  ",
		"GET /apis/discovery.k8s.io/v1/endpointslices?  ",
	}
	if diff := cmp.Diff(want, requests); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

func itemsOf(obj runtime.Object) []any {
	var out []any
	switch l := obj.(type) {
	case *corev1.NodeList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *corev1.ServiceList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *discoveryv1.EndpointSliceList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	}
	return out
}
