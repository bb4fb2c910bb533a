package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The benchmark's objects: ClusterIP Services without selectors in one namespace, each with one
// named port and one EndpointSlice of a single ready endpoint that the benchmark writes itself.
const (
	benchNamespace = "bench"
	clusterDomain  = "cluster.local"
	managedBy      = "bench.nodenet.dev" // not the endpointslice controller's, so it leaves them alone
	servicePort    = 80
	backendPort    = 8080
	portName       = "http"
)

// Address plan inside the cluster ranges (DESIGN.md): ClusterIPs from 10.100.0.10 (clear of the
// addresses clusters usually reserve), endpoints from 10.244.16.0 (above the nodes' pod ranges;
// nothing answers there, and nothing asks).
var (
	clusterIPBase = netip.MustParseAddr("10.100.0.10")
	endpointBase  = netip.MustParseAddr("10.244.16.0")
)

func addrAt(base netip.Addr, offset uint32) netip.Addr {
	b := base.As4()
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+offset)
	return netip.AddrFrom4(b)
}

func serviceName(i int) string { return fmt.Sprintf("svc-%d", i) }

// serviceFQDN is the name a pod resolves for Service i.
func serviceFQDN(i int) string {
	return fmt.Sprintf("%s.%s.svc.%s.", serviceName(i), benchNamespace, clusterDomain)
}

// workload creates the benchmark's Services and EndpointSlices.
type workload struct {
	client  kubernetes.Interface
	workers int
	vips    []netip.Addr // by Service index
}

func newWorkload(ctx context.Context, client kubernetes.Interface, workers int) (*workload, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create namespace %s: %w", benchNamespace, err)
	}
	return &workload{client: client, workers: workers}, nil
}

// grow creates Services until there are n, with w.workers requests in flight, and returns how
// long it took.
func (w *workload) grow(ctx context.Context, n int) (time.Duration, error) {
	start := time.Now()
	from := len(w.vips)
	if n <= from {
		return 0, nil
	}
	added := make([]netip.Addr, n-from)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(w.workers)
	for i := range added {
		g.Go(func() (err error) {
			added[i], err = w.create(ctx, from+i)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	w.vips = append(w.vips, added...)
	return time.Since(start), nil
}

func (w *workload) create(ctx context.Context, i int) (netip.Addr, error) {
	name := serviceName(i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNamespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			// A chosen ClusterIP spares the API server a scan of the allocated addresses per create.
			ClusterIP: addrAt(clusterIPBase, uint32(i)).String(),
			Ports: []corev1.ServicePort{{Name: portName, Protocol: corev1.ProtocolTCP, Port: servicePort,
				TargetPort: intstr.FromInt32(backendPort)}},
		},
	}
	var created *corev1.Service
	err := retry(ctx, func() (err error) {
		created, err = w.client.CoreV1().Services(benchNamespace).Create(ctx, svc, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) { // an earlier try that timed out went through
			created, err = w.client.CoreV1().Services(benchNamespace).Get(ctx, name, metav1.GetOptions{})
		}
		return err
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("create service %s: %w", name, err)
	}
	vip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s: cluster IP %q: %w", name, created.Spec.ClusterIP, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name + "-bench",
			Namespace: benchNamespace,
			Labels:    map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: managedBy},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(corev1.ProtocolTCP),
			Port: ptr.To[int32](backendPort)}},
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{addrAt(endpointBase, uint32(i)).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		}},
	}
	err = retry(ctx, func() error {
		_, err := w.client.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, slice, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("create endpointslice of %s: %w", name, err)
	}
	return vip, nil
}

// retry calls f until it succeeds, up to five times, while it fails the way an overloaded API
// server or etcd does ("etcdserver: request timed out" comes back as an internal error): on a
// busy shared machine a create of 10,000 can meet one.
func retry(ctx context.Context, f func() error) error {
	var err error
	for try := range 5 {
		if try > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(try) * time.Second):
			}
		}
		err = f()
		if err == nil || !(apierrors.IsInternalError(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
			apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) || strings.Contains(err.Error(), "request timed out")) {
			return err
		}
	}
	return err
}
