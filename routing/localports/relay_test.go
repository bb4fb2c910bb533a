package localports

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/nodenet/nodenet/internal/nstest"
)

// Most tests relay on the test process's own loopback, on ports the kernel picked a moment
// before; the pods are servers on other loopback ports.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var lo4 = netip.MustParseAddr("127.0.0.1")

func newRelay(t *testing.T, cfg Config) (*Relay, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	r := New(cfg, m, zaptest.NewLogger(t))
	t.Cleanup(r.Close)
	return r, m
}

// freePort returns a port of addr that nothing uses for proto at the moment.
func freePort(t *testing.T, proto string, addr netip.Addr) netip.AddrPort {
	t.Helper()
	var ap netip.AddrPort
	switch proto {
	case TCP:
		l, err := net.Listen(network(TCP, addr), netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		ap = l.Addr().(*net.TCPAddr).AddrPort()
		l.Close()
	case UDP:
		c, err := net.ListenUDP(network(UDP, addr), net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		if err != nil {
			t.Fatal(err)
		}
		ap = c.LocalAddr().(*net.UDPAddr).AddrPort()
		c.Close()
	}
	return netip.AddrPortFrom(addr, ap.Port())
}

// echoServer is a pod's TCP server: it greets every connection with "NAME\n", echoes what it
// reads and, at the client's end of stream, half-closes its own side after writing "NAME
// done\n". stop closes it and its connections.
func echoServer(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", name)
				if _, err := io.Copy(c, c); err != nil {
					return
				}
				fmt.Fprintf(c, "%s done\n", name)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// udpServer is a pod's UDP server answering every datagram with "NAME FROM DATA", FROM being
// the source address and port it saw.
func udpServer(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			reply := fmt.Sprintf("%s %s %s", name, from, buf[:n])
			if _, err := c.WriteToUDPAddrPort([]byte(reply), from); err != nil {
				t.Errorf("udp server reply: %v", err)
			}
		}
	})
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func dialTCP(t *testing.T, to netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", to.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	var b strings.Builder
	buf := make([]byte, 1)
	for {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("read line (so far %q): %v", b.String(), err)
		}
		if buf[0] == '\n' {
			return b.String()
		}
		b.WriteByte(buf[0])
	}
}

func TestTCPEchoWithHalfClose(t *testing.T) {
	pod := echoServer(t, "pod")
	r, metrics := newRelay(t, Config{})
	m := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo4), Target: pod}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(m); err != nil {
		t.Errorf("Check: %v", err)
	}
	c := dialTCP(t, m.Listen)
	if got := readLine(t, c); got != "pod" {
		t.Fatalf("greeting %q", got)
	}
	if got := testutil.ToFloat64(metrics.active.WithLabelValues(TCP)); got != 1 {
		t.Errorf("active connections %v, want 1", got)
	}
	payload := strings.Repeat("0123456789", 100_000) // a megabyte: more than the socket buffers hold
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := io.WriteString(c, payload); err != nil {
			t.Errorf("write: %v", err)
		}
		// Our end of stream must reach the pod through the relay while the answer still flows.
		if err := c.CloseWrite(); err != nil {
			t.Errorf("CloseWrite: %v", err)
		}
	})
	rest, err := io.ReadAll(c)
	wg.Wait()
	if err != nil {
		t.Fatalf("read to the pod's end of stream: %v", err)
	}
	if want := payload + "pod done\n"; string(rest) != want {
		t.Errorf("got %d bytes ending %q, want %d ending %q", len(rest), tail(string(rest)), len(want), tail(want))
	}
	waitFor(t, "the connection's goroutines to end", func() bool { return testutil.ToFloat64(metrics.active.WithLabelValues(TCP)) == 0 })
}

func tail(s string) string { return s[max(0, len(s)-20):] }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTCPPodUnreachableResets(t *testing.T) {
	r, metrics := newRelay(t, Config{DialTimeout: time.Second})
	closed := freePort(t, TCP, lo4) // nothing listens there
	m := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo4), Target: closed}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	// The reset may come before connect returns, or at the first read.
	c, err := net.DialTimeout("tcp", m.Listen.String(), 2*time.Second)
	if err == nil {
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection through a relay whose pod refuses: %v, want a reset", err)
	}
	if got := testutil.ToFloat64(metrics.failures.WithLabelValues(TCP, "dial")); got != 1 {
		t.Errorf("dial failures %v, want 1", got)
	}
}

// TestTCPMaxConns: beyond MaxConns a connection waits in the backlog until one ends.
func TestTCPMaxConns(t *testing.T) {
	pod := echoServer(t, "pod")
	r, _ := newRelay(t, Config{MaxConns: 1})
	m := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo4), Target: pod}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	first := dialTCP(t, m.Listen)
	if got := readLine(t, first); got != "pod" {
		t.Fatalf("greeting %q", got)
	}
	second := dialTCP(t, m.Listen) // completed by the kernel, not yet accepted
	if err := second.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("second connection answered while the first holds the only slot: %v", err)
	}
	first.Close()
	if err := second.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, second); got != "pod" {
		t.Errorf("second connection's greeting %q", got)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestUDPTwoClients(t *testing.T) {
	pod := udpServer(t, "pod")
	r, metrics := newRelay(t, Config{})
	m := Mapping{Proto: UDP, Listen: freePort(t, UDP, lo4), Target: pod}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{} // the pod's view of each client: one session each
	for i := range 2 {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(m.Listen))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for j := range 2 {
			msg := fmt.Sprintf("client%d-%d", i, j)
			got := askUDP(t, c, msg)
			name, rest, _ := strings.Cut(got, " ")
			from, data, _ := strings.Cut(rest, " ")
			if name != "pod" || data != msg {
				t.Fatalf("answer %q to %q", got, msg)
			}
			if j == 0 {
				if seen[from] {
					t.Errorf("client %d reached the pod from %s, as another client did", i, from)
				}
				seen[from] = true
			} else if !seen[from] {
				t.Errorf("client %d's second datagram came from %s, not its session's address", i, from)
			}
		}
	}
	if got := testutil.ToFloat64(metrics.active.WithLabelValues(UDP)); got != 2 {
		t.Errorf("sessions %v, want 2", got)
	}
}

func askUDP(t *testing.T, c *net.UDPConn, msg string) string {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("answer to %q: %v", msg, err)
	}
	return string(buf[:n])
}

func TestUDPIdleExpiry(t *testing.T) {
	pod := udpServer(t, "pod")
	const idle = 200 * time.Millisecond
	r, metrics := newRelay(t, Config{UDPIdleTimeout: idle})
	m := Mapping{Proto: UDP, Listen: freePort(t, UDP, lo4), Target: pod}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(m.Listen))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	source := func(msg string) string {
		_, rest, _ := strings.Cut(askUDP(t, c, msg), " ")
		from, _, _ := strings.Cut(rest, " ")
		return from
	}
	first := source("a")
	// Traffic more often than the idle timeout keeps the session.
	for range 6 {
		time.Sleep(idle / 3)
		if got := source("keep"); got != first {
			t.Fatalf("session changed from %s to %s while in use", first, got)
		}
	}
	sessions := func() float64 { return testutil.ToFloat64(metrics.active.WithLabelValues(UDP)) }
	if got := sessions(); got != 1 {
		t.Fatalf("sessions %v, want 1", got)
	}
	waitFor(t, "the idle session to expire", func() bool { return sessions() == 0 })
	if got := source("again"); got == first {
		t.Errorf("after expiry the pod still sees %s, want a new session", got)
	}
}

func TestUDPMaxSessions(t *testing.T) {
	pod := udpServer(t, "pod")
	r, metrics := newRelay(t, Config{MaxSessions: 1})
	m := Mapping{Proto: UDP, Listen: freePort(t, UDP, lo4), Target: pod}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	a, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(m.Listen))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	askUDP(t, a, "a")
	b, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(m.Listen))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.SetDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Read(make([]byte, 100)); !isTimeout(err) {
		t.Errorf("a second client beyond MaxSessions: %v, want no answer", err)
	}
	if got := testutil.ToFloat64(metrics.failures.WithLabelValues(UDP, "sessions")); got != 1 {
		t.Errorf("session-limit drops %v, want 1", got)
	}
}

// TestSetRemovesAndCloses: a mapping left out of Set loses its socket and the connections it
// relays; goleak checks that their goroutines end.
func TestSetRemovesAndCloses(t *testing.T) {
	tcpPod, udpPod := echoServer(t, "pod"), udpServer(t, "pod")
	r, metrics := newRelay(t, Config{})
	tm := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo4), Target: tcpPod}
	um := Mapping{Proto: UDP, Listen: freePort(t, UDP, lo4), Target: udpPod}
	if err := r.Set([]Mapping{tm, um}); err != nil {
		t.Fatal(err)
	}
	c := dialTCP(t, tm.Listen)
	readLine(t, c)
	u, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(um.Listen))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	askUDP(t, u, "x")

	if err := r.Set([]Mapping{um}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the relayed connection is still open after its mapping went")
	}
	if _, err := net.DialTimeout("tcp", tm.Listen.String(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to a removed mapping: %v, want refused", err)
	}
	if err := r.Check(tm); err == nil {
		t.Error("Check of a removed mapping passed")
	}
	if got := testutil.ToFloat64(metrics.ports.WithLabelValues(TCP)); got != 0 {
		t.Errorf("TCP ports %v, want 0", got)
	}
	askUDP(t, u, "still relayed")

	if err := r.Set(nil); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(metrics.active.WithLabelValues(UDP)); got != 0 {
		t.Errorf("UDP sessions %v after removal, want 0", got)
	}
	// The port is free again: the relay let go of it.
	l, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(um.Listen))
	if err != nil {
		t.Fatalf("bind the removed mapping's port: %v", err)
	}
	l.Close()
}

func TestListenConflict(t *testing.T) {
	pod := echoServer(t, "pod")
	held, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	r, _ := newRelay(t, Config{})
	taken := Mapping{Proto: TCP, Listen: held.Addr().(*net.TCPAddr).AddrPort(), Target: pod}
	free := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo4), Target: pod}
	err = r.Set([]Mapping{taken, free})
	var le *ListenError
	if !errors.As(err, &le) || le.Mapping != taken || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Set with a port held by another socket: %v, want a ListenError of %s with EADDRINUSE", err, taken)
	}
	if want := fmt.Sprintf("listen on %s/tcp: bind: address already in use", taken.Listen); le.Error() != want {
		t.Errorf("error %q, want %q", le.Error(), want)
	}
	if err := r.Check(free); err != nil {
		t.Errorf("the other mapping of the same Set: %v", err)
	}
	// Once the port is free, the next Set opens it.
	held.Close()
	if err := r.Set([]Mapping{taken, free}); err != nil {
		t.Fatalf("Set once the port is free: %v", err)
	}
	if got := readLine(t, dialTCP(t, taken.Listen)); got != "pod" {
		t.Errorf("greeting %q", got)
	}
}

// TestTargetChange: a mapping whose pod port changes keeps its socket; new connections go to the
// new target, a connection relayed already stays with the old one, and UDP sessions to the old
// one end.
func TestTargetChange(t *testing.T) {
	a, b := echoServer(t, "a"), echoServer(t, "b")
	ua, ub := udpServer(t, "a"), udpServer(t, "b")
	r, _ := newRelay(t, Config{})
	tm := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo4), Target: a}
	um := Mapping{Proto: UDP, Listen: freePort(t, UDP, lo4), Target: ua}
	if err := r.Set([]Mapping{tm, um}); err != nil {
		t.Fatal(err)
	}
	old := dialTCP(t, tm.Listen)
	if got := readLine(t, old); got != "a" {
		t.Fatalf("greeting %q", got)
	}
	u, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(um.Listen))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if got := askUDP(t, u, "x"); !strings.HasPrefix(got, "a ") {
		t.Fatalf("udp answer %q", got)
	}

	tm.Target, um.Target = b, ub
	if err := r.Set([]Mapping{tm, um}); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, dialTCP(t, tm.Listen)); got != "b" {
		t.Errorf("new connection reached %q, want b", got)
	}
	if _, err := io.WriteString(old, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, old); got != "ping" {
		t.Errorf("old connection echoed %q", got)
	}
	if got := askUDP(t, u, "y"); !strings.HasPrefix(got, "b ") {
		t.Errorf("udp answer after the change %q, want from b", got)
	}
	if err := r.Check(tm); err != nil {
		t.Error(err)
	}
}

func TestClose(t *testing.T) {
	pod := echoServer(t, "pod")
	r := New(Config{}, nil, zaptest.NewLogger(t))
	m := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo4), Target: pod}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	c := dialTCP(t, m.Listen)
	readLine(t, c)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("relayed connection open after shutdown")
	}
	if err := r.Set([]Mapping{m}); !errors.Is(err, ErrClosed) {
		t.Errorf("Set after shutdown: %v, want ErrClosed", err)
	}
}

func TestIPv6Loopback(t *testing.T) {
	lo6 := netip.MustParseAddr("::1")
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	var wg sync.WaitGroup
	defer func() {
		l.Close()
		wg.Wait()
	}()
	wg.Go(func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "six\n")
		c.Close()
	})
	r, _ := newRelay(t, Config{})
	m := Mapping{Proto: TCP, Listen: freePort(t, TCP, lo6), Target: l.Addr().(*net.TCPAddr).AddrPort()}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, dialTCP(t, m.Listen)); got != "six" {
		t.Errorf("greeting %q", got)
	}
}

// TestNetns: with Config.Netns the sockets are in that namespace, not the caller's.
func TestNetns(t *testing.T) {
	nstest.RequireRoot(t)
	n := nstest.NewNS(t)
	nl := nstest.NetlinkHandle(t, n)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	nstest.Serve(t, n, "127.0.0.1:8080", func(net.Conn) string { return "inside" })
	r, _ := newRelay(t, Config{Netns: n})
	m := Mapping{Proto: TCP, Listen: netip.MustParseAddrPort("127.0.0.1:54323"), Target: netip.MustParseAddrPort("127.0.0.1:8080")}
	if err := r.Set([]Mapping{m}); err != nil {
		t.Fatal(err)
	}
	got, err := nstest.AskLine(n, m.Listen.String(), 3*time.Second)
	if err != nil || got != "inside" {
		t.Errorf("inside the namespace: %q, %v", got, err)
	}
	// In the caller's namespace the mapping's address and port are free.
	l, err := net.Listen("tcp4", m.Listen.String())
	if err != nil {
		t.Errorf("the relay's port is taken outside its namespace: %v", err)
	} else {
		l.Close()
	}
}
