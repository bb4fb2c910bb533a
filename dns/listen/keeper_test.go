package listen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if reader := os.Getenv(readerEnv); reader != "" {
		os.Exit(runReader(reader))
	}
	goleak.VerifyTestMain(m)
}

type handoverCase struct {
	path string
	port int
	to   netip.AddrPort
	k    *Keeper
}

func newHandover(t *testing.T) *handoverCase {
	t.Helper()
	h := &handoverCase{path: filepath.Join(t.TempDir(), "keeper.sock"), port: freePort(t)}
	h.to = netip.AddrPortFrom(loopback, uint16(h.port))
	h.k = startKeeper(t, h.path)
	return h
}

func (h *handoverCase) open(t *testing.T, udpSockets int) *Sockets {
	t.Helper()
	s, err := Open(context.Background(), Config{Addrs: []netip.Addr{loopback}, Port: h.port, UDPSockets: udpSockets,
		KeeperSocket: h.path, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (h *handoverCase) held(udp int) string {
	return endpointsString(Config{Addrs: []netip.Addr{h.to.Addr()}, Port: int(h.to.Port()), UDPSockets: udp}.endpoints())
}

// TestHandover: a reader stops without draining its sockets; what is sent while none runs waits
// in the keeper's sockets and the next reader answers it, UDP and TCP alike.
func TestHandover(t *testing.T) {
	h := newHandover(t)
	first := serveEcho(t, h.open(t, 2))
	waitHeld(t, h.k, h.held(2))
	client := newEchoClient(t, h.to, 4)
	client.send(t, 20, 0)
	client.wantAll(t)

	first()
	client.send(t, 50, time.Millisecond)
	pending := askTCP(t, h.to, "while nobody reads")

	serveEcho(t, h.open(t, 2))
	client.send(t, 20, 0)
	client.wantAll(t)
	readAnswer(t, pending, "while nobody reads")
	waitHeld(t, h.k, h.held(2))
}

// TestHandoverResized: the next reader wants more sockets; it takes the ones the keeper holds
// (their queues included), binds the rest, and the keeper then holds exactly the new set, so no
// stale socket takes a share of the queries.
func TestHandoverResized(t *testing.T) {
	h := newHandover(t)
	first := serveEcho(t, h.open(t, 2))
	waitHeld(t, h.k, h.held(2))
	first()
	client := newEchoClient(t, h.to, 4)
	client.send(t, 20, 0)

	second := serveEcho(t, h.open(t, 3))
	waitHeld(t, h.k, h.held(3))
	client.wantAll(t)
	second()

	third := serveEcho(t, h.open(t, 1))
	waitHeld(t, h.k, h.held(1))
	// Many flows, so that the reuseport group hashes some onto every socket it has: an answer
	// goes missing if a dropped socket were still in it.
	many := newEchoClient(t, h.to, 64)
	many.send(t, 128, 0)
	many.wantAll(t)
	third()
}

// TestHandoverOtherPort: a reader configured for another endpoint binds its own, and the keeper
// lets the old one go: the old port is closed for good.
func TestHandoverOtherPort(t *testing.T) {
	h := newHandover(t)
	first := serveEcho(t, h.open(t, 1))
	waitHeld(t, h.k, h.held(1))
	first()

	other := *h
	other.port = freePort(t)
	other.to = netip.AddrPortFrom(loopback, uint16(other.port))
	serveEcho(t, other.open(t, 1))
	waitHeld(t, h.k, other.held(1))

	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(h.to))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("read from the old port: %v, want connection refused", err)
	}
}

// TestKeeperRestart: a keeper that restarts while the daemon runs gets the sockets again, and
// the handover after that works as before.
func TestKeeperRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keeper.sock")
	port := freePort(t)
	h := &handoverCase{path: path, port: port, to: netip.AddrPortFrom(loopback, uint16(port))}
	var stop func()
	h.k, stop = startKeeperStoppable(t, path)
	t.Cleanup(stop)
	first := serveEcho(t, h.open(t, 2))
	waitHeld(t, h.k, h.held(2))

	stop()
	client := newEchoClient(t, h.to, 4)
	client.send(t, 10, 0)
	client.wantAll(t)

	h.k = startKeeper(t, path)
	waitHeld(t, h.k, h.held(2))
	first()
	client.send(t, 30, time.Millisecond)
	serveEcho(t, h.open(t, 2))
	client.wantAll(t)
}

// TestOpenIncompatibleKeeper: a keeper speaking another protocol version stops Open with an
// error naming the socket and both versions.
func TestOpenIncompatibleKeeper(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keeper.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		var req request
		if _, err := receive(c, &req); err != nil {
			served <- err
			return
		}
		served <- send(c, map[string]any{"version": 2, "sockets": []string{}}, nil)
	}()
	_, err = Open(context.Background(), Config{Addrs: []netip.Addr{loopback}, Port: freePort(t), UDPSockets: 1, KeeperSocket: path})
	want := fmt.Sprintf("dns-keeper at %s: protocol version 2 not spoken here: this side speaks version 1", path)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open: %v, want an error containing %q", err, want)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// rawClient talks the protocol to a keeper by hand.
func rawClient(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rawExchange(t *testing.T, c *net.UnixConn, msg any, fds []int) reply {
	t.Helper()
	if err := send(c, msg, fds); err != nil {
		t.Fatal(err)
	}
	var r reply
	got, err := receive(c, &r)
	closeAll(got)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestKeeperRefuses: the keeper answers requests it cannot serve with a reason, keeps what it
// held, and closes descriptors it refused.
func TestKeeperRefuses(t *testing.T) {
	h := newHandover(t)
	serveEcho(t, h.open(t, 1))
	waitHeld(t, h.k, h.held(1))

	unbound, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unbound)
	notListening, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(notListening)
	unixSocket, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unixSocket)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer closeAll(pipe[:])

	for _, tc := range []struct {
		name string
		msg  any
		fds  []int
		want string
	}{
		{"other version", request{Version: 7, Op: opGet}, nil, "protocol version 7 not spoken here: this side speaks version 1"},
		{"unknown op", request{Version: protocolVersion, Op: "drop"}, nil, `unknown op "drop": want "get" or "put"`},
		{"not JSON", []byte("hello"), nil, "malformed message"},
		{"pipe", request{Version: protocolVersion, Op: opPut}, []int{pipe[0]}, "is not a socket"},
		{"unbound socket", request{Version: protocolVersion, Op: opPut}, []int{unbound}, "udp socket not bound to a port"},
		{"TCP not listening", request{Version: protocolVersion, Op: opPut}, []int{notListening}, "TCP socket that is not listening"},
		{"unix socket", request{Version: protocolVersion, Op: opPut}, []int{unixSocket}, "socket of type 2 protocol 0, want UDP or TCP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rawExchange(t, rawClient(t, h.path), tc.msg, tc.fds)
			if r.Version != protocolVersion || !strings.Contains(r.Error, tc.want) {
				t.Errorf("answer %+v, want version %d and an error containing %q", r, protocolVersion, tc.want)
			}
			if got := h.k.heldString(); got != h.held(1) {
				t.Errorf("keeper holds %q after a refused request, want %q", got, h.held(1))
			}
		})
	}
}

// TestKeeperEmptyPut: a deposit of nothing makes the keeper let everything go.
func TestKeeperEmptyPut(t *testing.T) {
	h := newHandover(t)
	serveEcho(t, h.open(t, 1))
	waitHeld(t, h.k, h.held(1))
	c := rawClient(t, h.path)
	if r := rawExchange(t, c, request{Version: protocolVersion, Op: opPut}, nil); r.Error != "" || len(r.Held) != 0 {
		t.Fatalf("answer %+v, want nothing held", r)
	}
	if got := h.k.heldString(); got != "" {
		t.Fatalf("keeper holds %q", got)
	}
}

// TestKeeperSocketFile: the socket is mode 0600; a live keeper's path is not taken over, a dead
// one's is, a path that is not a socket is left alone; the socket goes when the keeper stops.
func TestKeeperSocketFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "keeper.sock")
	_, stop := startKeeperStoppable(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want a socket of mode 0600", fi.Mode())
	}
	if _, err := NewKeeper(KeeperConfig{Socket: path}); err == nil || !strings.Contains(err.Error(), "another dns-keeper serves "+path) {
		t.Errorf("second keeper: %v, want an error saying another one serves %s", err, path)
	}
	stop()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after stop: %v, want it gone", err)
	}

	// A socket file nobody serves, as a killed keeper leaves it.
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	startKeeper(t, path)

	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewKeeper(KeeperConfig{Socket: regular}); err == nil || !strings.Contains(err.Error(), regular+" exists and is not a socket") {
		t.Errorf("keeper on a regular file: %v", err)
	}
}
