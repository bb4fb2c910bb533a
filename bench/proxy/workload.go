package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
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

// The benchmark's objects: Services without selectors in one namespace, each with one
// EndpointSlice of endpointsPerService ready endpoints that the benchmark writes itself.
const (
	benchNamespace      = "bench"
	managedBy           = "bench.nodenet.dev" // not the endpointslice controller's, so it leaves them alone
	endpointsPerService = 10
	servicePort         = 80
	backendPort         = 8080
	portName            = "http"
)

// Address plan of the benchmark inside the cluster range 10.244.0.0/16 (DESIGN.md). The lab's
// nodes get their pod ranges from kube-controller-manager at the bottom (10.244.0.0/24, ...).
var (
	// fakeBase..: the endpoints of every Service but the first connectServices are pod addresses
	// that nothing answers, 10.244.16.0-10.244.239.255 (reused round-robin beyond 57k).
	fakeBase  = netip.MustParseAddr("10.244.16.0")
	fakeCount = uint32(224 * 256)
	// fixedIPBase..: the Services' ClusterIPs, in the Service range 10.96.0.0/12 and clear of
	// the addresses clusters usually reserve (10.96.0.1, 10.96.0.10).
	fixedIPBase = netip.MustParseAddr("10.100.0.10")
	// changeBase..: the new address an endpoint change writes, never one of the above.
	changeBase  = netip.MustParseAddr("10.244.240.0")
	changeCount = uint32(10 * 256)
	// clientNet and backendNet are the two links of each side's node namespace to its client
	// and backend namespaces; the backend namespace holds the real endpoints.
	clientGW   = netip.MustParseAddr("10.244.250.1")
	clientAddr = netip.MustParseAddr("10.244.250.2")
	backendGW  = netip.MustParseAddr("10.244.251.1")
	// backendAddrs are the endpoints of the connect-latency Services: real listeners.
	backendAddrs = func() []netip.Addr {
		var as []netip.Addr
		a := netip.MustParseAddr("10.244.251.10")
		for range endpointsPerService {
			as = append(as, a)
			a = a.Next()
		}
		return as
	}()
)

func addrAt(base netip.Addr, offset uint32) netip.Addr {
	b := base.As4()
	v := binary.BigEndian.Uint32(b[:]) + offset
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// service is one benchmark Service as the API server has it.
type service struct {
	name  string
	vip   netip.Addr
	slice *discoveryv1.EndpointSlice // the latest version written
}

// workload creates and changes the benchmark's Services and EndpointSlices.
type workload struct {
	client   kubernetes.Interface
	workers  int
	real     int // the first real Services point at backendAddrs
	services []*service
	changes  uint32 // endpoint changes made so far, to pick fresh addresses
}

func newWorkload(ctx context.Context, client kubernetes.Interface, workers, real int) (*workload, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create namespace %s: %w", benchNamespace, err)
	}
	return &workload{client: client, workers: max(workers, 1), real: real}, nil
}

// grow creates Services (and their EndpointSlices) until there are n, with w.workers requests in
// flight, and returns how long it took.
func (w *workload) grow(ctx context.Context, n int) (time.Duration, error) {
	start := time.Now()
	from := len(w.services)
	if n <= from {
		return 0, nil
	}
	added := make([]*service, n-from)
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
	w.services = append(w.services, added...)
	return time.Since(start), nil
}

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// endpointAddrs are the addresses of Service i's endpoints at creation.
func (w *workload) endpointAddrs(i int) []netip.Addr {
	if i < w.real {
		return backendAddrs
	}
	as := make([]netip.Addr, endpointsPerService)
	for j := range as {
		as[j] = addrAt(fakeBase, uint32(i*endpointsPerService+j)%fakeCount)
	}
	return as
}

func (w *workload) create(ctx context.Context, i int) (*service, error) {
	name := serviceName(i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNamespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Name: portName, Protocol: corev1.ProtocolTCP, Port: servicePort,
				TargetPort: intstr.FromInt32(backendPort)}},
		},
	}
	// A chosen ClusterIP halves the API server's work: picking one lists every allocated
	// address (ipallocator.Allocator.Used, O(Services) per create), and it lists them once more
	// for a free one.
	svc.Spec.ClusterIP = addrAt(fixedIPBase, uint32(i)).String()
	created, err := w.client.CoreV1().Services(benchNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service %s: %w", name, err)
	}
	vip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		return nil, fmt.Errorf("service %s: cluster IP %q: %w", name, created.Spec.ClusterIP, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name + "-bench",
			Namespace: benchNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: name,
				discoveryv1.LabelManagedBy:   managedBy,
			},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(corev1.ProtocolTCP),
			Port: ptr.To[int32](backendPort)}},
	}
	for _, a := range w.endpointAddrs(i) {
		slice.Endpoints = append(slice.Endpoints, readyEndpoint(a))
	}
	sl, err := w.client.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, slice, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create endpointslice of %s: %w", name, err)
	}
	return &service{name: name, vip: vip, slice: sl}, nil
}

// readyEndpoint is a ready endpoint at a. A pod address names its node, as the endpointslice
// controller writes it: the node whose /24 pod range holds it, never the benchmark's own node
// (10.244.0.0/24). The connect Services' real listeners name none.
func readyEndpoint(a netip.Addr) discoveryv1.Endpoint {
	var node *string
	if a.As4()[2] != backendGW.As4()[2] {
		node = ptr.To(fmt.Sprintf("pods-%d", a.As4()[2]))
	}
	return discoveryv1.Endpoint{
		Addresses: []string{a.String()},
		NodeName:  node,
		Conditions: discoveryv1.EndpointConditions{
			Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false),
		},
	}
}

// changeEndpoint replaces the address of endpoint slot of Service i by a fresh one, stamps the
// trigger-time annotation as the endpointslice controller does, and returns the new address.
func (w *workload) changeEndpoint(ctx context.Context, i, slot int) (netip.Addr, error) {
	s := w.services[i]
	addr := addrAt(changeBase, w.changes%changeCount)
	w.changes++
	sl := s.slice.DeepCopy()
	sl.Endpoints[slot] = readyEndpoint(addr)
	sl.Annotations[corev1.EndpointsLastChangeTriggerTime] = time.Now().UTC().Format(time.RFC3339Nano)
	updated, err := w.client.DiscoveryV1().EndpointSlices(benchNamespace).Update(ctx, sl, metav1.UpdateOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("update endpointslice of %s: %w", s.name, err)
	}
	s.slice = updated
	return addr, nil
}

// defaultWorkers keeps the API server busy without drowning a small machine.
func defaultWorkers() int { return 16 * runtime.NumCPU() }
