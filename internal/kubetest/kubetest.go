// Package kubetest serves what the daemon asks of the API server (kubeapi.Client's methods) from
// client-go's fake clientset, whose objects and watches tests drive. Only tests import it: the
// clientset links every API group into a binary.
package kubetest

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// API is kubeapi.Client over a clientset, usually fake.NewClientset.
type API struct {
	Clientset kubernetes.Interface
}

// listWatch lists and watches through a typed client, with the fake's own say on whether it
// streams the initial list as events (it does not).
func (a API) listWatch(list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error), selector fields.Selector) cache.ListerWatcher {
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = selector.String()
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector.String()
			return watchFn(ctx, o)
		},
	}, a.Clientset)
}

// Nodes lists and watches every Node.
func (a API) Nodes() cache.ListerWatcher { return a.nodes(fields.Everything()) }

// Node lists and watches one Node (the fake ignores the field selector).
func (a API) Node(name string) cache.ListerWatcher {
	return a.nodes(fields.OneTermEqualSelector("metadata.name", name))
}

func (a API) nodes(selector fields.Selector) cache.ListerWatcher {
	c := a.Clientset.CoreV1().Nodes()
	return a.listWatch(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }, c.Watch, selector)
}

// Services lists and watches the Services of every namespace.
func (a API) Services() cache.ListerWatcher {
	c := a.Clientset.CoreV1().Services(metav1.NamespaceAll)
	return a.listWatch(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }, c.Watch, fields.Everything())
}

// EndpointSlices lists and watches the EndpointSlices of every namespace.
func (a API) EndpointSlices() cache.ListerWatcher {
	c := a.Clientset.DiscoveryV1().EndpointSlices(metav1.NamespaceAll)
	return a.listWatch(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }, c.Watch, fields.Everything())
}

// GetNode reads the Node name.
func (a API) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	return a.Clientset.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
}

// PatchNode applies a JSON merge patch to the Node name.
func (a API) PatchNode(ctx context.Context, name string, mergePatch []byte) error {
	_, err := a.Clientset.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, mergePatch, metav1.PatchOptions{})
	return err
}
