package listen

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

func TestConfigErrors(t *testing.T) {
	ok := Config{Addrs: []netip.Addr{loopback}, Port: 53}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no address", func(c *Config) { c.Addrs = nil }, "no address given"},
		{"wildcard", func(c *Config) { c.Addrs = []netip.Addr{netip.IPv4Unspecified()} }, "0.0.0.0 is a wildcard"},
		{"IPv6 wildcard", func(c *Config) { c.Addrs = []netip.Addr{netip.IPv6Unspecified()} }, ":: is a wildcard"},
		{"multicast", func(c *Config) { c.Addrs = []netip.Addr{netip.MustParseAddr("224.0.0.251")} }, "is multicast"},
		{"mapped", func(c *Config) { c.Addrs = []netip.Addr{netip.MustParseAddr("::ffff:127.0.0.1")} }, "use the IPv4 form 127.0.0.1"},
		{"zone", func(c *Config) { c.Addrs = []netip.Addr{netip.MustParseAddr("fe80::1%lo")} }, "zones are not allowed"},
		{"twice", func(c *Config) { c.Addrs = []netip.Addr{loopback, loopback} }, "127.0.0.1 given twice"},
		{"port 0", func(c *Config) { c.Port = 0 }, "port 0: want 1-65535"},
		{"port too big", func(c *Config) { c.Port = 65536 }, "port 65536"},
		{"negative sockets", func(c *Config) { c.UDPSockets = -1 }, "-1 UDP sockets per address"},
		{"too many sockets", func(c *Config) { c.UDPSockets = 65 }, "65 UDP sockets per address: want 1-64"},
		{"too many descriptors", func(c *Config) {
			c.UDPSockets = 64
			c.Addrs = []netip.Addr{loopback, netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")}
		}, "4 addresses × (64 UDP + 1 TCP) sockets = 260, more than the 253"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			_, err := c.normalized()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	c, err := ok.normalized()
	if err != nil {
		t.Fatal(err)
	}
	if want := min(runtime.GOMAXPROCS(0), maxUDPSockets); c.UDPSockets != want {
		t.Errorf("default UDP sockets %d, want %d", c.UDPSockets, want)
	}
}

// TestOpenAlone: without a keeper, Open binds every socket exactly to its address, with the
// options the design relies on, and says that restarts will drop queries.
func TestOpenAlone(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	port := freePort(t)
	s, err := Open(context.Background(), Config{Addrs: []netip.Addr{loopback}, Port: port, UDPSockets: 3, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, s)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	want := []string{"tcp/" + addr, "udp/" + addr, "udp/" + addr, "udp/" + addr}
	if diff := cmp.Diff(want, boundTo(t, s)); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}
	for _, c := range s.UDP {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		cerr := rc.Control(func(fd uintptr) {
			for _, o := range []struct {
				name       string
				level, opt int
				atLeast    int
			}{
				{"SO_REUSEPORT", unix.SOL_SOCKET, unix.SO_REUSEPORT, 1},
				{"IP_FREEBIND", unix.IPPROTO_IP, unix.IP_FREEBIND, 1},
				// Without CAP_NET_ADMIN the buffer is capped at rmem_max, which may be lower.
				{"SO_RCVBUF", unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbufFloor()},
			} {
				v, err := unix.GetsockoptInt(int(fd), o.level, o.opt)
				if err != nil || v < o.atLeast {
					t.Errorf("%s = %d, %v; want at least %d", o.name, v, err, o.atLeast)
				}
			}
		})
		if cerr != nil {
			t.Fatal(cerr)
		}
	}
	to := netip.AddrPortFrom(loopback, uint16(port))
	e := newEchoClient(t, to, 4)
	e.send(t, 20, 0)
	e.wantAll(t)
	readAnswer(t, askTCP(t, to, "hello"), "hello")
	if logs.FilterMessageSnippet("no DNS socket keeper configured").Len() != 1 {
		t.Errorf("no warning that restarts drop queries; logs: %v", logs.All())
	}
}

// rcvbufFloor is the receive buffer Open gets for sure: the kernel doubles what is asked, and
// only root may go past rmem_max.
func rcvbufFloor() int {
	if unix.Geteuid() == 0 {
		return 2 * receiveBuffer
	}
	return 0
}

// TestOpenFreebind: binding works for an address no interface has yet.
func TestOpenFreebind(t *testing.T) {
	s, err := Open(context.Background(), Config{Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.53")}, Port: freePort(t), UDPSockets: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOpenNoKeeperYet: with the keeper's socket configured but nobody serving it, Open binds its
// own sockets, warns, and deposits them as soon as a keeper starts.
func TestOpenNoKeeperYet(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	path := filepath.Join(t.TempDir(), "keeper.sock")
	port := freePort(t)
	s, err := Open(context.Background(), Config{Addrs: []netip.Addr{loopback}, Port: port, UDPSockets: 2, KeeperSocket: path, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, s)
	if logs.FilterMessageSnippet("no DNS socket keeper: a restart of the daemon will drop").Len() != 1 {
		t.Errorf("no warning that restarts drop queries; logs: %v", logs.All())
	}
	k := startKeeper(t, path)
	waitHeld(t, k, fmt.Sprintf("tcp/127.0.0.1:%d udp/127.0.0.1:%d×2", port, port))
	// The keeper holds the sockets just before the daemon reads its confirmation.
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessageSnippet("deposited DNS sockets with the keeper").Len() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no log of the deposit; logs: %v", logs.All())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCloseStopsRetrying: Close ends the goroutine that waits for a keeper (goleak checks).
func TestCloseStopsRetrying(t *testing.T) {
	s, err := Open(context.Background(), Config{Addrs: []netip.Addr{loopback}, Port: freePort(t), UDPSockets: 1,
		KeeperSocket: filepath.Join(t.TempDir(), "none.sock")})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * minBackoff)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
