package mmsg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/containernetworking/plugins/pkg/ns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// listenIn opens a UDP socket on addr inside n: the socket stays in that namespace whichever
// thread uses it afterwards.
func listenIn(t *testing.T, n ns.NetNS, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// loopbackNS is a fresh namespace with lo up, which is all these tests send over.
func loopbackNS(t *testing.T) ns.NetNS {
	t.Helper()
	nstest.RequireRoot(t)
	n := nstest.NewNS(t)
	lo, err := nstest.NetlinkHandle(t, n).LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nstest.NetlinkHandle(t, n).LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return n
}

func rawConn(t *testing.T, c *net.UDPConn) syscall.RawConn {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// readAll reads from rc until want datagrams have come, in as many batches as that takes.
func readAll(t *testing.T, r *Reader, c *net.UDPConn, want int) (payloads []string, peers []netip.AddrPort) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for len(payloads) < want {
		n, err := r.Read(rawConn(t, c))
		if err != nil {
			t.Fatalf("Read after %d of %d datagrams: %v", len(payloads), want, err)
		}
		for i := range n {
			payloads = append(payloads, string(r.Payload(i)))
			peers = append(peers, r.Peer(i))
		}
	}
	return payloads, peers
}

func TestReadAndReplyToEachPeer(t *testing.T) {
	for _, family := range []struct{ name, server, client string }{
		{"IPv4", "127.0.0.1:5353", "127.0.0.1:0"},
		{"IPv6", "[::1]:5353", "[::1]:0"},
	} {
		t.Run(family.name, func(t *testing.T) {
			n := loopbackNS(t)
			server := listenIn(t, n, family.server)
			clients := []*net.UDPConn{listenIn(t, n, family.client), listenIn(t, n, family.client)}
			// More datagrams than one batch holds, from two peers, interleaved.
			const perClient = 6
			for k := range perClient {
				for ci, c := range clients {
					if _, err := c.WriteToUDPAddrPort(fmt.Appendf(nil, "q%d-%d", ci, k), netip.MustParseAddrPort(family.server)); err != nil {
						t.Fatal(err)
					}
				}
			}
			r, w := NewReader(4, 64), NewWriter(4)
			payloads, peers := readAll(t, r, server, perClient*len(clients))
			for i, p := range payloads {
				var ci, k int
				if _, err := fmt.Sscanf(p, "q%d-%d", &ci, &k); err != nil {
					t.Fatalf("datagram %d: %q: %v", i, p, err)
				}
				if want := clients[ci].LocalAddr().(*net.UDPAddr).AddrPort(); peers[i] != want {
					t.Errorf("datagram %q: peer %s, want %s", p, peers[i], want)
				}
			}
			// Each reply must reach the peer that asked.
			for ci, c := range clients {
				if _, err := c.WriteToUDPAddrPort(fmt.Appendf(nil, "r%d", ci), netip.MustParseAddrPort(family.server)); err != nil {
					t.Fatal(err)
				}
			}
			for answered := 0; answered < len(clients); {
				n, err := r.Read(rawConn(t, server))
				if err != nil {
					t.Fatal(err)
				}
				for i := range n {
					w.Reply([]byte("a-"+string(r.Payload(i))), r, i)
				}
				if err := w.Flush(rawConn(t, server)); err != nil {
					t.Fatalf("Flush: %v", err)
				}
				answered += n
			}
			for ci, c := range clients {
				if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 64)
				m, err := c.Read(buf)
				if err != nil {
					t.Fatalf("client %d: %v", ci, err)
				}
				if want := fmt.Sprintf("a-r%d", ci); string(buf[:m]) != want {
					t.Errorf("client %d got %q, want %q", ci, buf[:m], want)
				}
			}
		})
	}
}

// A datagram the kernel refuses must not cost the others theirs.
func TestFlushSkipsARefusedDatagram(t *testing.T) {
	n := loopbackNS(t)
	server := listenIn(t, n, "127.0.0.1:5353")
	client := listenIn(t, n, "127.0.0.1:0")
	for _, q := range []string{"one", "two"} {
		if _, err := client.WriteToUDPAddrPort([]byte(q), netip.MustParseAddrPort("127.0.0.1:5353")); err != nil {
			t.Fatal(err)
		}
	}
	r, w := NewReader(4, 64), NewWriter(4)
	readAll(t, r, server, 2)
	w.Reply([]byte("to one"), r, 0)
	w.Reply([]byte("nowhere"), r, 1)
	// The namespace has only lo: a peer off it has no route, and sendmmsg refuses it.
	unroutable := (*unix.RawSockaddrInet4)(unsafe.Pointer(&w.addrs[1]))
	unroutable.Addr = [4]byte{192, 0, 2, 1}
	w.Reply([]byte("to two"), r, 1)
	err := w.Flush(rawConn(t, server))
	if !errors.Is(err, unix.ENETUNREACH) {
		t.Errorf("Flush: %v, want ENETUNREACH for the unroutable peer", err)
	}
	if err := client.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"to one", "to two"} {
		buf := make([]byte, 64)
		m, err := client.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if string(buf[:m]) != want {
			t.Errorf("got %q, want %q", buf[:m], want)
		}
	}
}

func TestReadEndsAtTheDeadline(t *testing.T) {
	n := loopbackNS(t)
	server := listenIn(t, n, "127.0.0.1:5353")
	if err := server.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := NewReader(4, 64).Read(rawConn(t, server)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read on an idle socket past its deadline: %v, want a deadline error", err)
	}
}

// A read and a reply, the server's whole loop, allocate nothing.
func TestReadAndFlushDoNotAllocate(t *testing.T) {
	n := loopbackNS(t)
	server := listenIn(t, n, "127.0.0.1:5353")
	client := listenIn(t, n, "127.0.0.1:0")
	srv := rawConn(t, server)
	to := netip.MustParseAddrPort("127.0.0.1:5353")
	r, w := NewReader(4, 64), NewWriter(4)
	buf, query, answer := make([]byte, 64), []byte("query"), []byte("answer")
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := client.WriteToUDPAddrPort(query, to); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(srv); err != nil {
			t.Fatal(err)
		}
		w.Reply(answer, r, 0)
		if err := w.Flush(srv); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Read(buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a read and a reply allocated %.1f times", allocs)
	}
}
