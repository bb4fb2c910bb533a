package listen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Config configures Open.
type Config struct {
	// Addrs are the DNS addresses; each socket is bound to one of them exactly, never to a
	// wildcard, so that the node's own addresses never answer DNS.
	Addrs []netip.Addr
	// Port is the DNS port: 53 on nodes.
	Port int
	// UDPSockets is the number of UDP sockets per address, one SO_REUSEPORT group over which the
	// kernel spreads the queries by flow. 0 means GOMAXPROCS, at most maxUDPSockets.
	UDPSockets int
	// KeeperSocket is the dns-keeper's unix socket; "" runs without a keeper, so that a restart
	// of the daemon drops the queries that arrive meanwhile.
	KeeperSocket string
	Log          *zap.Logger
}

// maxUDPSockets caps UDPSockets: more readers than that bring a node-local cache nothing, and
// the whole set must fit in one keeper message.
const maxUDPSockets = 64

// receiveBuffer is each UDP socket's receive buffer: a few thousand queries, which is what
// arrives at a busy node while no daemon reads (a restart takes a second or two).
const receiveBuffer = 4 << 20

// exchangeTimeout bounds one request to the keeper; it answers from memory at once, and a keeper
// that hangs must not hold up the daemon's start.
const exchangeTimeout = 5 * time.Second

// Backoff of the attempts to reach the keeper again after it went away.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Sockets are the DNS sockets of one daemon run.
type Sockets struct {
	UDP []*net.UDPConn
	TCP []*net.TCPListener

	log        *zap.Logger
	keeperPath string

	// The keeper goroutine (keepDeposited) runs from Open to Close when a keeper is configured
	// and is the only user of the connection to the keeper. stop ends it; it closes done as it
	// returns, and Close waits for that before closing the sockets it deposits.
	stop context.CancelFunc
	done chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// Open returns the DNS sockets for cfg: the keeper's, where it holds sockets for the same
// endpoints (so what queued while no daemon ran is read now), else freshly bound ones, which it
// then deposits with the keeper in place of what the keeper held. Without a reachable keeper it
// binds its own and keeps trying to deposit them. ctx bounds the exchange with the keeper; the
// sockets and the keeper goroutine last until Close.
func Open(ctx context.Context, cfg Config) (*Sockets, error) {
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	want := cfg.endpoints()
	log := cfg.Log.Named("dns-listen")
	var conn *net.UnixConn
	var taken []int
	if cfg.KeeperSocket != "" {
		conn, taken, err = fetch(ctx, cfg.KeeperSocket)
		var incompatible *incompatibleKeeperError
		switch {
		case errors.As(err, &incompatible):
			return nil, err
		case err != nil:
			log.Warn("no DNS socket keeper: a restart of the daemon will drop the queries that arrive meanwhile; depositing once one answers",
				zap.String("socket", cfg.KeeperSocket), zap.Error(err))
		}
	}

	s := &Sockets{log: log, keeperPath: cfg.KeeperSocket}
	reused, err := s.assemble(ctx, want, taken)
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, errors.Join(err, s.Close())
	}
	log.Info("DNS sockets open", zap.String("endpoints", endpointsString(want)),
		zap.Int("fromKeeper", reused), zap.Int("bound", len(want)-reused))
	if cfg.KeeperSocket == "" {
		log.Warn("no DNS socket keeper configured: a restart of the daemon will drop the queries that arrive meanwhile")
		return s, nil
	}
	if conn != nil && (reused != len(want) || len(taken) != len(want)) {
		if err := s.deposit(ctx, conn); err != nil {
			log.Warn("deposit DNS sockets with the keeper; trying again", zap.Error(err))
			conn.Close()
			conn = nil
		}
	}
	run, stop := context.WithCancel(context.Background())
	s.stop, s.done = stop, make(chan struct{})
	go s.keepDeposited(run, conn)
	return s, nil
}

// Close closes this process's sockets; the keeper keeps its duplicates for the next Open.
func (s *Sockets) Close() error {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			s.stop()
			<-s.done
		}
		var errs []error
		for _, c := range s.UDP {
			errs = append(errs, c.Close())
		}
		for _, l := range s.TCP {
			errs = append(errs, l.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

func (c Config) normalized() (Config, error) {
	if len(c.Addrs) == 0 {
		return c, errors.New("dns listen: no address given")
	}
	seen := map[netip.Addr]bool{}
	for _, a := range c.Addrs {
		switch {
		case !a.IsValid():
			return c, errors.New("dns listen: invalid address (zero value)")
		case a.Zone() != "":
			return c, fmt.Errorf("dns listen: address %s: zones are not allowed", a)
		case a.Is4In6():
			return c, fmt.Errorf("dns listen: address %s: use the IPv4 form %s", a, a.Unmap())
		case a.IsUnspecified():
			return c, fmt.Errorf("dns listen: address %s is a wildcard: each DNS address is bound exactly", a)
		case a.IsMulticast():
			return c, fmt.Errorf("dns listen: address %s is multicast", a)
		case seen[a]:
			return c, fmt.Errorf("dns listen: address %s given twice", a)
		}
		seen[a] = true
	}
	if c.Port < 1 || c.Port > 65535 {
		return c, fmt.Errorf("dns listen: port %d: want 1-65535", c.Port)
	}
	switch {
	case c.UDPSockets < 0 || c.UDPSockets > maxUDPSockets:
		return c, fmt.Errorf("dns listen: %d UDP sockets per address: want 1-%d, or 0 for GOMAXPROCS", c.UDPSockets, maxUDPSockets)
	case c.UDPSockets == 0:
		c.UDPSockets = min(runtime.GOMAXPROCS(0), maxUDPSockets)
	}
	if n := len(c.Addrs) * (c.UDPSockets + 1); n > maxFDs {
		return c, fmt.Errorf("dns listen: %d addresses × (%d UDP + 1 TCP) sockets = %d, more than the %d one keeper message carries",
			len(c.Addrs), c.UDPSockets, n, maxFDs)
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return c, nil
}

// endpoints is every socket cfg asks for, sorted.
func (c Config) endpoints() []endpoint {
	var es []endpoint
	for _, a := range c.Addrs {
		ap := netip.AddrPortFrom(a, uint16(c.Port))
		for range c.UDPSockets {
			es = append(es, endpoint{Network: "udp", Addr: ap})
		}
		es = append(es, endpoint{Network: "tcp", Addr: ap})
	}
	return sortedEndpoints(es)
}

// assemble fills s with a socket for each wanted endpoint: one of taken (descriptors from the
// keeper, all of which it consumes) where one is bound to it, else a new one. It reports how many
// it took over.
func (s *Sockets) assemble(ctx context.Context, want []endpoint, taken []int) (int, error) {
	spare := map[endpoint][]int{}
	for _, fd := range taken {
		e, err := describe(fd)
		if err != nil {
			s.log.Warn("dropping a descriptor from the keeper", zap.Error(err))
			closeAll([]int{fd})
			continue
		}
		spare[e] = append(spare[e], fd)
	}
	defer func() {
		// Sockets the keeper held that this configuration does not want: the deposit that
		// follows drops the keeper's copies too, and the sockets leave their groups.
		for _, fds := range spare {
			closeAll(fds)
		}
	}()
	reused := 0
	for _, e := range want {
		var f *os.File
		if fds := spare[e]; len(fds) > 0 {
			f = os.NewFile(uintptr(fds[0]), e.String())
			spare[e] = fds[1:]
			reused++
		}
		if err := s.add(ctx, e, f); err != nil {
			return reused, err
		}
	}
	return reused, nil
}

// add appends the socket for e to s: f's (closed afterwards) when f is not nil, else a new one.
func (s *Sockets) add(ctx context.Context, e endpoint, f *os.File) error {
	if f != nil {
		defer f.Close()
	}
	network := e.Network + "4"
	if e.Addr.Addr().Is6() {
		network = e.Network + "6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error { return setOptions(c, e) }}
	// Plain TCP, as DNS clients speak it: Go would otherwise make MPTCP listeners where the
	// kernel has MPTCP, which the keeper's check of the socket's protocol refuses.
	lc.SetMultipathTCP(false)
	switch e.Network {
	case "udp":
		var pc net.PacketConn
		var err error
		if f != nil {
			pc, err = net.FilePacketConn(f)
		} else {
			pc, err = lc.ListenPacket(ctx, network, e.Addr.String())
		}
		if err != nil {
			return fmt.Errorf("dns listen: %s: %w", e, err)
		}
		s.UDP = append(s.UDP, pc.(*net.UDPConn))
	case "tcp":
		var ln net.Listener
		var err error
		if f != nil {
			ln, err = net.FileListener(f)
		} else {
			ln, err = lc.Listen(ctx, network, e.Addr.String())
		}
		if err != nil {
			return fmt.Errorf("dns listen: %s: %w", e, err)
		}
		s.TCP = append(s.TCP, ln.(*net.TCPListener))
	}
	return nil
}

// setOptions prepares a socket before bind: SO_REUSEPORT so several sockets (the daemon's and
// the ones a keeper holds) share the endpoint, FREEBIND so binding works before the address is
// on an interface, and for UDP a receive buffer that rides out a restart (the privileged
// SO_RCVBUFFORCE past rmem_max where allowed).
func setOptions(c syscall.RawConn, e endpoint) error {
	var err error
	cerr := c.Control(func(fd uintptr) {
		s := int(fd)
		if err = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			err = fmt.Errorf("SO_REUSEPORT: %w", err)
			return
		}
		if e.Addr.Addr().Is6() {
			err = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			err = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
		}
		if err != nil {
			err = fmt.Errorf("FREEBIND: %w", err)
			return
		}
		if e.Network != "udp" {
			return
		}
		if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, receiveBuffer) != nil {
			if err = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, receiveBuffer); err != nil {
				err = fmt.Errorf("SO_RCVBUF: %w", err)
			}
		}
	})
	return errors.Join(cerr, err)
}
