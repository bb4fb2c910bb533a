package listen

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// freePort returns a port free for UDP and TCP on 127.0.0.1 just now.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

// startKeeper runs a keeper on path until the test ends.
func startKeeper(t *testing.T, path string) *Keeper {
	t.Helper()
	k, stop := startKeeperStoppable(t, path)
	t.Cleanup(stop)
	return k
}

// startKeeperStoppable runs a keeper on path; stop ends it and waits, and may be called twice.
func startKeeperStoppable(t *testing.T, path string) (*Keeper, func()) {
	t.Helper()
	k, err := NewKeeper(KeeperConfig{Socket: path, Log: zaptest.NewLogger(t).Named(filepath.Base(path))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	var once sync.Once
	return k, func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("keeper: %v", err)
			}
		})
	}
}

// heldString is what k holds, as endpointsString renders it.
func (k *Keeper) heldString() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return endpointsString(heldEndpoints(k.held))
}

// waitHeld waits until k holds want.
func waitHeld(t *testing.T, k *Keeper, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for k.heldString() != want {
		if time.Now().After(deadline) {
			t.Fatalf("keeper holds %q, want %q", k.heldString(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serveEcho answers every datagram on s's UDP sockets with itself and every line on connections
// to its TCP listeners with itself, until s is closed; the returned func closes s and waits.
func serveEcho(t *testing.T, s *Sockets) (closeAndWait func()) {
	t.Helper()
	var wg sync.WaitGroup
	for _, c := range s.UDP {
		wg.Go(func() {
			buf := make([]byte, 512)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return // closed
				}
				// A lost answer shows as a missing sequence number at the client.
				_, _ = c.WriteToUDPAddrPort(buf[:n], from)
			}
		})
	}
	for _, l := range s.TCP {
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return // closed
				}
				wg.Go(func() {
					defer c.Close()
					line, err := bufio.NewReader(c).ReadString('\n')
					if err == nil {
						// A failed answer shows at the client.
						_, _ = c.Write([]byte(line))
					}
				})
			}
		})
	}
	var once sync.Once
	closeAndWait = func() {
		once.Do(func() {
			if err := s.Close(); err != nil {
				t.Errorf("close sockets: %v", err)
			}
			wg.Wait()
		})
	}
	t.Cleanup(closeAndWait)
	return closeAndWait
}

// echoClient sends numbered datagrams from several sockets (so the reuseport group spreads
// them) to an echo server and records which came back.
type echoClient struct {
	conns []*net.UDPConn
	wg    sync.WaitGroup

	mu     sync.Mutex
	got    map[uint32]bool
	sent   uint32
	sentAt []time.Time // by number
}

func newEchoClient(t *testing.T, to netip.AddrPort, sockets int) *echoClient {
	t.Helper()
	e, err := dialEchoClient(to, sockets)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	return e
}

// dialEchoClient is newEchoClient for a caller in another network namespace, where t.Fatal must
// not be called; the caller closes the client.
func dialEchoClient(to netip.AddrPort, sockets int) (*echoClient, error) {
	e := &echoClient{got: map[uint32]bool{}}
	for range sockets {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			e.close()
			return nil, err
		}
		e.conns = append(e.conns, c)
		e.wg.Go(func() {
			buf := make([]byte, 64)
			for {
				n, err := c.Read(buf)
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if err != nil || n != 4 {
					continue // ICMP errors while nothing listens, which the test judges by what is missing
				}
				e.mu.Lock()
				e.got[binary.BigEndian.Uint32(buf)] = true
				e.mu.Unlock()
			}
		})
	}
	return e, nil
}

func (e *echoClient) close() {
	for _, c := range e.conns {
		c.Close()
	}
	e.wg.Wait()
}

// send sends the next n numbers, one every interval.
func (e *echoClient) send(t *testing.T, n int, interval time.Duration) {
	t.Helper()
	for range n {
		e.mu.Lock()
		seq := e.sent
		e.sent++
		e.sentAt = append(e.sentAt, time.Now())
		e.mu.Unlock()
		c := e.conns[int(seq)%len(e.conns)]
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, seq)); err != nil {
			// A refused earlier datagram surfaces on a later write of a connected socket; this
			// one was sent all the same only if the write succeeded, so count it as lost.
			t.Logf("send %d: %v", seq, err)
		}
		if interval > 0 {
			time.Sleep(interval)
		}
	}
}

// missing waits until every number sent came back or the timeout passes, and returns those
// that did not.
func (e *echoClient) missing(timeout time.Duration) []uint32 {
	deadline := time.Now().Add(timeout)
	for {
		e.mu.Lock()
		var lost []uint32
		for i := range e.sent {
			if !e.got[i] {
				lost = append(lost, i)
			}
		}
		e.mu.Unlock()
		if len(lost) == 0 || time.Now().After(deadline) {
			return lost
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *echoClient) wantAll(t *testing.T) {
	t.Helper()
	if lost := e.missing(5 * time.Second); len(lost) > 0 {
		t.Fatalf("%d of %d datagrams unanswered: %v", len(lost), e.sent, lost[:min(len(lost), 20)])
	}
}

// wantAllBut is wantAll allowing up to spare datagrams to go unanswered if each was sent within
// window; it returns how many did.
func (e *echoClient) wantAllBut(t *testing.T, spare int, window [2]time.Time) int {
	t.Helper()
	lost := e.missing(5 * time.Second)
	e.mu.Lock()
	defer e.mu.Unlock()
	excused := 0
	for _, seq := range lost {
		if at := e.sentAt[seq]; excused < spare && !at.Before(window[0]) && !at.After(window[1]) {
			excused++
			continue
		}
		t.Fatalf("%d of %d datagrams unanswered: %v (sent at %v; the spare window was %v – %v)", len(lost), e.sent,
			lost[:min(len(lost), 20)], e.sentAt[seq].Format("15:04:05.000"), window[0].Format("15:04:05.000"), window[1].Format("15:04:05.000"))
	}
	return excused
}

// askTCP sends a line and returns the connection for readAnswer.
func askTCP(t *testing.T, to netip.AddrPort, line string) net.Conn {
	t.Helper()
	c, err := dialLine(to, line)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialLine connects to to and sends a line; the caller closes the connection.
func dialLine(to netip.AddrPort, line string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", to.String(), 2*time.Second)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func readAnswer(t *testing.T, c net.Conn, want string) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != want+"\n" {
		t.Fatalf("TCP answer %q, %v; want %q", got, err, want)
	}
}

func boundTo(t *testing.T, s *Sockets) []string {
	t.Helper()
	var out []string
	for _, c := range s.UDP {
		out = append(out, "udp/"+c.LocalAddr().String())
	}
	for _, l := range s.TCP {
		out = append(out, "tcp/"+l.Addr().String())
	}
	slices.Sort(out)
	return out
}
