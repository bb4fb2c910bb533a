// Command listfloor is the proxy benchmark's floor for a cold start: it does what any Service
// proxy has to do before it can program its first Service, and nothing else. It starts, reads a
// kubeconfig, connects to the API server and receives and decodes the whole list of Services and
// of EndpointSlices, both at once, over protobuf, as nodenet's daemon does; then it prints how
// many of each it decoded and exits. The benchmark times it from exec to exit in the same node
// namespace as the proxies, against the same API server and objects, so a proxy's cold start
// minus this floor is what the proxy itself adds.
//
//	listfloor KUBECONFIG
package main

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodenet/nodenet/kubeapi"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: listfloor KUBECONFIG")
		os.Exit(2)
	}
	services, slices, err := list(context.Background(), os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "listfloor:", err)
		os.Exit(1)
	}
	fmt.Printf("services=%d endpointslices=%d\n", services, slices)
}

// list receives both lists at once and counts their items.
func list(ctx context.Context, kubeconfig string) (services, slices int, err error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return 0, 0, err
	}
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	rc.UserAgent = "nodenet-bench-listfloor"
	c, err := kubeapi.New(rc)
	if err != nil {
		return 0, 0, err
	}
	var g errgroup.Group
	count := func(lw any, n *int) func() error {
		return func() error {
			l, ok := lw.(*kubeapi.ItemLister)
			if !ok {
				return fmt.Errorf("%T lists no items one at a time", lw)
			}
			_, err := l.ListEach(ctx, metav1.ListOptions{ResourceVersion: "0"}, func(runtime.Object) error {
				*n++
				return nil
			})
			return err
		}
	}
	g.Go(count(c.Services(), &services))
	g.Go(count(c.EndpointSlices(), &slices))
	return services, slices, g.Wait()
}
