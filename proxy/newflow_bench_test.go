package proxy

import (
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/ti-mo/conntrack"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// BenchmarkNewFlow measures what the proxy's tables cost a new connection to
// no Service, most of a node's connections: each op is one datagram from the
// client namespace to a fresh port of a pod, routed by the node namespace,
// and so one new conntrack entry passing every nat hook there. "floor" has
// what any NAT-based proxy has: a nat chain whose one rule needs conntrack,
// which the kernel enables in a namespace only for such rules (a table of
// plain matches leaves packets untracked). The others have the proxy's
// tables for n Services of the benchmark's world. The difference is the
// proxy's cost per new connection. Run as root:
//
//	go test -run '^$' -bench NewFlow -count 5 ./proxy/
func BenchmarkNewFlow(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for network namespaces")
	}
	for _, services := range []int{0, 10, 1000} {
		name := fmt.Sprintf("tables-%d", services)
		if services == 0 {
			name = "floor"
		}
		b.Run(name, func(b *testing.B) {
			tp := newTopology(b)
			if services == 0 {
				conntrackFloor(b, tp.node)
			} else {
				facts := Facts{Node: Node{Name: nodeA}, ClusterCIDRs: []netip.Prefix{pf("10.244.0.0/16")}}
				s := NewSyncer(NewApplier(int(tp.node.Fd())), facts, zap.NewNop())
				if _, err := s.Sync(benchWorld(services)); err != nil {
					b.Fatal(err)
				}
			}
			sendNewFlows(b, tp)
		})
	}
}

// conntrackFloor gives n conntrack and NAT with nothing to do: one nat
// chain with a rule that never matches here, ct state untracked.
func conntrackFloor(b *testing.B, n ns.NetNS) {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		b.Fatal(err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "floor"})
	ch := c.AddChain(&nftables.Chain{Table: t, Name: "prerouting", Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(expr.CtStateBitUNTRACKED), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	if err := c.Flush(); err != nil {
		b.Fatal(err)
	}
}

// sendNewFlows sends b.N datagrams from the client to pod1, each to a port
// not used since the node's conntrack table was last flushed.
func sendNewFlows(b *testing.B, tp *topology) {
	const ports = 50_000
	flush := func() {
		err := tp.node.Do(func(ns.NetNS) error {
			c, err := conntrack.Dial(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Flush()
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	err := tp.client.Do(func(ns.NetNS) error {
		// Do runs on a locked thread, and the datagrams are routed in its
		// context: one CPU does the whole path.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrInet4{Addr: netip.MustParseAddr(pod1).As4()}
		msg := []byte{0}
		flush()
		for i := 0; b.Loop(); i++ {
			if i > 0 && i%ports == 0 {
				b.StopTimer()
				flush()
				b.StartTimer()
			}
			to.Port = 10_000 + i%ports
			if err := unix.Sendto(fd, msg, 0, to); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
