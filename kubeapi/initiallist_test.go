package kubeapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	clientfeatures "k8s.io/client-go/features"
)

// With ListInitialState an informer's first request is a plain list, not a watch that streams
// the initial objects.
func TestListInitialStateLists(t *testing.T) {
	ListInitialState()
	first := make(chan *http.Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case first <- r:
		default:
		}
		// Nothing else matters: the reflector retries until it is stopped.
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	c, err := New(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := cache.NewReflector(c.Services(), &corev1.Service{}, cache.NewStore(cache.MetaNamespaceKeyFunc), 0)
	done := make(chan struct{})
	go func() { defer close(done); r.RunWithContext(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case req := <-first:
		q := req.URL.Query()
		if q.Get("watch") != "" || q.Get("sendInitialEvents") != "" {
			t.Errorf("first request %s, want a list", req.URL)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reflector made no request")
	}
}

type fixedGates bool

func (g fixedGates) Enabled(clientfeatures.Feature) bool { return bool(g) }

func TestListGates(t *testing.T) {
	on := listGates{fixedGates(true)}
	if on.Enabled(clientfeatures.WatchListClient) {
		t.Error("WatchListClient enabled without its environment variable")
	}
	if !on.Enabled(clientfeatures.InformerResourceVersion) {
		t.Error("another feature not left to the default gates")
	}
	t.Setenv("KUBE_FEATURE_WatchListClient", "true")
	if !on.Enabled(clientfeatures.WatchListClient) {
		t.Error("WatchListClient set in the environment is not left to the default gates")
	}
}
