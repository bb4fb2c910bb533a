package proxy

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/testutils"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nodenet/nodenet/hub"
)

// benchWorld is the Service benchmark's world (bench/proxy): n ClusterIP Services with one TCP
// port and ten ready endpoints each, pods of other nodes, no NodePort, as the hub caches them.
func benchWorld(n int) map[ServiceKey]InputSource {
	out := make(map[ServiceKey]InputSource, n)
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP,
				ClusterIP: netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}).String(),
				Ports:     []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}}
		sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name + "-bench"},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}}}
		for j := range 10 {
			e := i*10 + j
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{netip.AddrFrom4([4]byte{10, byte(128 + e>>16), byte(e >> 8), byte(e)}).String()},
				NodeName:   ptr.To(fmt.Sprintf("pods-%d", byte(e>>8))),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}})
		}
		src, _ := FromHub(hub.ServiceOf(svc), []*hub.EndpointSlice{hub.EndpointSliceOf(sl)})
		out[ServiceKey{"bench", name}] = src
	}
	return out
}

// BenchmarkSyncerColdStart times a full sync of the benchmark's world into a fresh network
// namespace: building, comparing with the (empty) kernel, translating, sending and the kernel's
// own work. Run as root: go test -run '^$' -bench SyncerColdStart ./proxy/
func BenchmarkSyncerColdStart(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a network namespace")
	}
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			world := benchWorld(n)
			var user, sys time.Duration
			var kept uint64 // live heap after a sync: the world and the Syncer
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				node, err := testutils.NewNS()
				if err != nil {
					b.Fatal(err)
				}
				s := NewSyncer(NewApplier(int(node.Fd())), Facts{Node: Node{Name: nodeA}, ClusterCIDRs: []netip.Prefix{pf("10.0.0.0/8")}}, zap.NewNop())
				b.StartTimer()
				u0, s0 := cpuTime(b)
				if _, err := s.Sync(world); err != nil {
					b.Fatal(err)
				}
				u1, s1 := cpuTime(b)
				user, sys = user+u1-u0, sys+s1-s0
				b.StopTimer()
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				kept = max(kept, ms.HeapAlloc)
				runtime.KeepAlive(s)
				if err := node.Close(); err != nil {
					b.Fatal(err)
				}
				if err := testutils.UnmountNS(node); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(user.Milliseconds())/float64(b.N), "user-ms/op")
			b.ReportMetric(float64(sys.Milliseconds())/float64(b.N), "sys-ms/op")
			b.ReportMetric(float64(kept)/(1<<20), "live-MiB")
		})
	}
}

// cpuTime is the process's user and system time so far: the kernel's work on the batches is
// system time, and the garbage collector's runs on other threads.
func cpuTime(b *testing.B) (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
