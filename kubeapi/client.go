// Package kubeapi is the daemon's client of the Kubernetes API server, for the few kinds of
// objects it reads and writes: Nodes, Services and EndpointSlices. It is a REST client whose
// scheme knows only their API groups. client-go's clientset registers every API group in its
// scheme, which links all of them into the binary: 14 of the daemon's 36 MB, most of them paged
// in at start on every node.
package kubeapi

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/flowcontrol"
)

// Client talks to the API server; it is safe for concurrent use.
type Client struct {
	core      rest.Interface // the core group, /api/v1
	discovery rest.Interface // discovery.k8s.io/v1
}

// New returns a client for the server rc describes. Like client-go's clientset, its groups share
// one HTTP client and one rate limiter.
func New(rc *rest.Config) (*Client, error) {
	cfg := *rc
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if cfg.RateLimiter == nil && cfg.QPS > 0 {
		if cfg.Burst <= 0 {
			return nil, fmt.Errorf("API client: a burst is required with a QPS of %v", cfg.QPS)
		}
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
	}
	httpClient, err := rest.HTTPClientFor(&cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := discoveryv1.AddToScheme(s); err != nil {
		return nil, err
	}
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	codecs := rest.CodecFactoryForGeneratedClient(s, serializer.NewCodecFactory(s)).WithoutConversion()
	group := func(gv schema.GroupVersion, apiPath string) (rest.Interface, error) {
		c := cfg
		c.GroupVersion = &gv
		c.APIPath = apiPath
		c.NegotiatedSerializer = codecs
		return rest.RESTClientForConfigAndClient(&c, httpClient)
	}
	core, err := group(corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, fmt.Errorf("API client for %s: %w", corev1.SchemeGroupVersion, err)
	}
	discovery, err := group(discoveryv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return nil, fmt.Errorf("API client for %s: %w", discoveryv1.SchemeGroupVersion, err)
	}
	return &Client{core: core, discovery: discovery}, nil
}

// Nodes lists and watches every Node.
func (c *Client) Nodes() cache.ListerWatcher {
	return cache.NewListWatchFromClient(c.core, "nodes", metav1.NamespaceAll, fields.Everything())
}

// Node lists and watches the Node name alone.
func (c *Client) Node(name string) cache.ListerWatcher {
	return cache.NewListWatchFromClient(c.core, "nodes", metav1.NamespaceAll, fields.OneTermEqualSelector("metadata.name", name))
}

// Services lists and watches the Services of every namespace.
func (c *Client) Services() cache.ListerWatcher {
	return newItemLister(c.core, "services", func() protoObject { return &corev1.Service{} })
}

// EndpointSlices lists and watches the EndpointSlices of every namespace.
func (c *Client) EndpointSlices() cache.ListerWatcher {
	return newItemLister(c.discovery, "endpointslices", func() protoObject { return &discoveryv1.EndpointSlice{} })
}

// GetNode reads the Node name.
func (c *Client) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	node := &corev1.Node{}
	if err := c.core.Get().Resource("nodes").Name(name).Do(ctx).Into(node); err != nil {
		return nil, err
	}
	return node, nil
}

// PatchNode applies a JSON merge patch to the Node name.
func (c *Client) PatchNode(ctx context.Context, name string, mergePatch []byte) error {
	return c.core.Patch(types.MergePatchType).Resource("nodes").Name(name).Body(mergePatch).Do(ctx).Error()
}
