package main

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/nodenet/nodenet/internal/kubetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestWaitForPodCIDRs: a node registered before the controller assigned its range makes the
// daemon wait (and say so), then continue with the range once it appears.
func TestWaitForPodCIDRs(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}})
	watching := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("nodes", func(k8stesting.Action) (bool, watch.Interface, error) {
		once.Do(func() { close(watching) })
		return false, nil, nil
	})
	core, logs := observer.New(zap.InfoLevel)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	type result struct {
		cidrs []netip.Prefix
		err   error
	}
	done := make(chan result, 1)
	go func() {
		cidrs, err := waitForPodCIDRs(ctx, kubetest.API{Clientset: client}, "node1", zap.New(core))
		done <- result{cidrs, err}
	}()
	// The update must come after the daemon's watch exists: the fake, unlike the API server,
	// does not replay events from a resourceVersion.
	select {
	case <-watching:
	case r := <-done:
		t.Fatalf("returned %v, %v before the node had podCIDRs", r.cidrs, r.err)
	case <-ctx.Done():
		t.Fatal("the daemon never watched the Node")
	}
	if logs.FilterMessageSnippet("waiting for the Node").Len() == 0 {
		t.Error("no log line saying the daemon waits for podCIDRs")
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.3.0/24", PodCIDRs: []string{"10.244.3.0/24", "fd00:10:244:3::/64"}}}
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}
	if diff := cmp.Diff(want, r.cidrs, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("podCIDRs (-want +got):\n%s", diff)
	}
}

// TestWaitForPodCIDRsRejectsGarbage: a malformed podCIDR on the Node is an error naming it, not a
// silently wrong pod range.
func TestWaitForPodCIDRsRejectsGarbage(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"},
		Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.3.0/33"}}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := waitForPodCIDRs(ctx, kubetest.API{Clientset: client}, "node1", zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), `"10.244.3.0/33"`) {
		t.Fatalf("got %v, want an error naming the bad podCIDR", err)
	}
}
