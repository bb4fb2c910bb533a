package proxy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// randomService draws Service i of a random world. Its ClusterIPs are its own, but its external
// and load-balancer IPs come from small pools, so that Services now and then claim the same
// key; every kind of port the Syncer lays out differently turns up: chainless ClusterIP ports,
// NodePorts, affinity, local traffic policies, source ranges, several protocols and both families.
func randomService(r *rand.Rand, i int) (Service, []Endpoint) {
	svc := Service{Namespace: "r", Name: fmt.Sprintf("svc-%02d", i)}
	var families []Family
	switch x := r.IntN(20); {
	case x < 12:
		families = []Family{IPv4}
	case x < 15:
		families = []Family{IPv6}
	default:
		families = []Family{IPv4, IPv6}
	}
	for _, f := range families {
		if f == IPv4 {
			svc.ClusterIPs = append(svc.ClusterIPs, netip.AddrFrom4([4]byte{10, 96, 0, byte(i)}))
		} else {
			svc.ClusterIPs = append(svc.ClusterIPs, netip.MustParseAddr(fmt.Sprintf("fd00:96::%x", i)))
		}
	}
	protocols := []Protocol{TCP, UDP, SCTP}
	nodePorts := r.IntN(10) < 3
	for j := range 1 + r.IntN(2) {
		p := ServicePort{Name: fmt.Sprintf("p%d", j), Protocol: protocols[r.IntN(len(protocols))], Port: []int32{80, 53}[r.IntN(2)]}
		if j > 0 && p.Protocol == svc.Ports[0].Protocol && p.Port == svc.Ports[0].Port {
			continue // the API server refuses a port and protocol twice
		}
		if nodePorts {
			p.NodePort = int32(30000 + 2*i + j)
		}
		svc.Ports = append(svc.Ports, p)
	}
	if r.IntN(5) == 0 {
		svc.ExternalIPs = []netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + r.IntN(3))})}
	}
	if r.IntN(7) == 0 {
		svc.LoadBalancerIPs = []netip.Addr{netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + r.IntN(2))})}
		if r.IntN(2) == 0 {
			svc.LoadBalancerSourceRanges = []netip.Prefix{pf("10.0.0.0/8")}
		}
	}
	if r.IntN(5) == 0 {
		svc.SessionAffinityTimeout = 3 * time.Hour
	}
	svc.ExternalLocal = r.IntN(5) == 0
	svc.InternalLocal = r.IntN(7) == 0
	if svc.ExternalLocal && nodePorts {
		svc.Ports[0].HealthCheckNodePort = int32(32000 + i)
	}
	return svc, randomEndpoints(r, svc)
}

// randomEndpoints draws a Service's endpoints from a pool of pod addresses on two nodes, with
// every combination of conditions: none at all a fifth of the time.
func randomEndpoints(r *rand.Rand, svc Service) []Endpoint {
	if r.IntN(5) == 0 {
		return nil
	}
	var out []Endpoint
	for _, f := range []Family{IPv4, IPv6} {
		if len(addrsOf(svc.ClusterIPs, f)) == 0 {
			continue
		}
		// The endpointslice controller lists an address once per Service.
		for _, host := range r.Perm(12)[:1+r.IntN(5)] {
			host := byte(1 + host)
			addr := netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(2)), host})
			if f == IPv6 {
				addr = netip.MustParseAddr(fmt.Sprintf("fd00:244::%x", host))
			}
			ports := map[string]int32{}
			for j, p := range svc.Ports {
				ports[p.Name] = int32(8080 + j)
			}
			e := Endpoint{Addr: addr, Ports: ports, NodeName: []string{nodeA, nodeB}[r.IntN(2)]}
			switch r.IntN(6) {
			case 0: // terminating but still serving
				e.Serving, e.Terminating = true, true
			case 1: // not ready, not serving
			default:
				e.Ready, e.Serving = true, true
			}
			out = append(out, e)
		}
	}
	return out
}

// TestSyncerRandomChanges drives the Syncer through random sequences of partial syncs (Services
// added, replaced, deleted, their endpoints redrawn; batches now and then tiny, so that syncs
// split) and after each one checks that the kernel holds what the ledger says and what one full
// build of the inputs describes. Now and then a new Syncer, as after a restart, must find the
// kernel as it wants it and send nothing.
func TestSyncerRandomChanges(t *testing.T) {
	requireRoot(t)
	const services, steps = 30, 40
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 0x5eed))
			node := newNS(t)
			s := newTestSyncer(t, node)
			world := map[ServiceKey]*ServiceInput{}
			for i := range services {
				if r.IntN(3) > 0 {
					svc, eps := randomService(r, i)
					world[svc.Key()] = &ServiceInput{Service: svc, Endpoints: eps}
				}
			}
			all := func() map[ServiceKey]InputSource {
				out := map[ServiceKey]InputSource{}
				for k, in := range world {
					out[k] = in
				}
				return out
			}
			mustSync(t, s, all())
			checkLedger(t, s)
			for step := range steps {
				changed := map[ServiceKey]InputSource{}
				var what []string
				for range 1 + r.IntN(4) {
					i := r.IntN(services)
					k := ServiceKey{"r", fmt.Sprintf("svc-%02d", i)}
					in, ok := world[k]
					switch x := r.IntN(20); {
					case x < 3:
						delete(world, k)
						changed[k] = nil
						what = append(what, "delete "+k.Name)
					case x < 11 || !ok:
						svc, eps := randomService(r, i)
						world[k] = &ServiceInput{Service: svc, Endpoints: eps}
						changed[k] = world[k]
						what = append(what, "replace "+k.Name)
					default:
						next := &ServiceInput{Service: in.Service, Endpoints: randomEndpoints(r, in.Service)}
						world[k] = next
						changed[k] = next
						what = append(what, "endpoints of "+k.Name)
					}
				}
				s.app.batchOps = []int{maxBatchOps, maxBatchOps, 8}[r.IntN(3)]
				if _, err := s.Sync(changed); err != nil {
					t.Fatalf("step %d (%v): %v", step, what, err)
				}
				if len(s.Rejected()) > 0 {
					t.Fatalf("step %d (%v): rejected %v", step, what, s.Rejected())
				}
				checkLedger(t, s)
				if t.Failed() {
					t.Fatalf("step %d: %v", step, what)
				}
				if step%10 == 9 {
					restarted := newTestSyncer(t, node)
					if res := mustSync(t, restarted, all()); res.Ops != 0 {
						t.Fatalf("step %d: a restarted Syncer sent %d objects, want none", step, res.Ops)
					}
				}
			}
		})
	}
}
