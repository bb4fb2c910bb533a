// Package localports serves the hostPort mappings on a loopback hostIP (127.0.0.0/8, ::1) by
// relaying in userspace, as docker-proxy does for ports published on localhost: a socket listens
// on the address and port in the node's network namespace and every connection or datagram is
// relayed to the pod. DNAT cannot carry them: the kernel drops a packet with a loopback source or
// destination on any device but lo unless route_localnet is set, and nodenet never sets it (it
// would let the network reach every service bound to 127.0.0.1).
//
// The relay holds the sockets only; which mappings exist, who owns them and whether they conflict
// is routing.HostPorts' business, which records them in the kernel and hands the relay the whole
// set after each change (Set).
package localports

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"go.uber.org/zap"
)

// Protocols the relay serves.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Defaults of Config.
const (
	DefaultDialTimeout = 5 * time.Second
	DefaultMaxConns    = 1024
	// DefaultUDPIdleTimeout is conntrack's timeout of an unreplied UDP flow (nf_conntrack_udp_timeout
	// is 30 s, nf_conntrack_udp_timeout_stream 120 s): a session with no datagram either way for
	// this long is forgotten and its upstream socket closed.
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultMaxSessions    = 1024
)

// Mapping is one relayed hostPort: Listen on the node, relayed to Target in a pod.
type Mapping struct {
	Proto  string // TCP or UDP
	Listen netip.AddrPort
	Target netip.AddrPort
}

func (m Mapping) String() string {
	return fmt.Sprintf("%s/%s->%s", m.Listen, m.Proto, m.Target)
}

// key is what identifies a relay's socket: a mapping whose target changes keeps its socket.
type key struct {
	proto  string
	listen netip.AddrPort
}

func (m Mapping) key() key { return key{m.Proto, m.Listen} }

// ListenError says the socket of a mapping could not be opened: most often another program of
// the node holds the address and port.
type ListenError struct {
	Mapping Mapping
	Err     error // the system call's error, such as syscall.EADDRINUSE
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("listen on %s/%s: %v", e.Mapping.Listen, e.Mapping.Proto, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// ErrClosed is returned by Set once the relay has shut down.
var ErrClosed = errors.New("hostPort relay is shut down")

// Config tunes the relay; zero values take the defaults.
type Config struct {
	// Netns is the namespace the sockets are opened in: the listeners and the connections to
	// the pods. nil is the namespace of the process, which for the daemon is the node's.
	Netns ns.NetNS
	// DialTimeout bounds a TCP connection to the pod.
	DialTimeout time.Duration
	// MaxConns bounds the TCP connections relayed at once per mapping; beyond it new connections
	// wait in the listener's backlog.
	MaxConns int
	// UDPIdleTimeout ends a UDP session after this long without a datagram either way.
	UDPIdleTimeout time.Duration
	// MaxSessions bounds the UDP sessions (client addresses) per mapping; datagrams of further
	// clients are dropped until one expires.
	MaxSessions int
}

// Relay owns the relayed mappings' sockets and goroutines. Its methods may be called
// concurrently; Set and Close are serialised on one lock.
type Relay struct {
	cfg     Config
	log     *zap.Logger
	metrics *Metrics

	mu     sync.Mutex
	closed bool
	ports  map[key]port
}

// port is the socket of one mapping with what it relays.
type port interface {
	target() netip.AddrPort
	// setTarget sends what comes next to t; connections already relayed keep their pod.
	setTarget(t netip.AddrPort)
	// close closes the socket and everything it relays, and waits for its goroutines.
	close()
}

// New returns a relay with no mappings. metrics may be nil.
func New(cfg Config, metrics *Metrics, log *zap.Logger) *Relay {
	if log == nil {
		log = zap.NewNop()
	}
	cfg.DialTimeout = cmp.Or(cfg.DialTimeout, DefaultDialTimeout)
	cfg.MaxConns = cmp.Or(cfg.MaxConns, DefaultMaxConns)
	cfg.UDPIdleTimeout = cmp.Or(cfg.UDPIdleTimeout, DefaultUDPIdleTimeout)
	cfg.MaxSessions = cmp.Or(cfg.MaxSessions, DefaultMaxSessions)
	return &Relay{cfg: cfg, log: log.Named("hostport-relay"), metrics: metrics, ports: map[key]port{}}
}

// Set makes the relayed mappings exactly want: sockets are opened for new mappings, a mapping
// whose target changed keeps its socket and sends new connections to the new target, and the
// sockets of mappings not in want are closed with everything they relay. Of two mappings with
// the same protocol and listening address the last wins. A socket that cannot be opened is a
// *ListenError in the returned join; the others are set all the same, and the next Set tries
// the failed ones again.
func (r *Relay) Set(want []Mapping) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	wanted := map[key]Mapping{}
	for _, m := range want {
		wanted[m.key()] = m
	}
	var errs []error
	for _, k := range slices.SortedFunc(maps.Keys(wanted), compareKeys) {
		m := wanted[k]
		if p, ok := r.ports[k]; ok {
			if p.target() != m.Target {
				r.log.Info("relay target changed", zap.Stringer("mapping", m), zap.Stringer("was", p.target()))
				p.setTarget(m.Target)
			}
			continue
		}
		p, err := r.open(m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.ports[k] = p
		r.metrics.portOpened(m.Proto)
		r.log.Info("relaying", zap.Stringer("mapping", m))
	}
	for k, p := range r.ports {
		if _, ok := wanted[k]; ok {
			continue
		}
		p.close()
		delete(r.ports, k)
		r.metrics.portClosed(k.proto)
		r.log.Info("stopped relaying", zap.String("listen", k.listen.String()), zap.String("proto", k.proto),
			zap.Stringer("target", p.target()))
	}
	return errors.Join(errs...)
}

// Check reports whether m is relayed: its socket open and sending to m.Target.
func (r *Relay) Check(m Mapping) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.ports[m.key()]
	switch {
	case !ok:
		return fmt.Errorf("%s/%s is not listening", m.Listen, m.Proto)
	case p.target() != m.Target:
		return fmt.Errorf("%s/%s relays to %s, not %s", m.Listen, m.Proto, p.target(), m.Target)
	}
	return nil
}

// Run waits for ctx to end, then closes every socket (Close). A restarted daemon opens them
// again from the mappings it reads back; the connections relayed meanwhile are cut.
func (r *Relay) Run(ctx context.Context) error {
	<-ctx.Done()
	r.Close()
	return nil
}

// Close closes every socket and connection and waits for the goroutines; later Sets fail with
// ErrClosed.
func (r *Relay) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for k, p := range r.ports {
		p.close()
		delete(r.ports, k)
		r.metrics.portClosed(k.proto)
	}
}

func (r *Relay) open(m Mapping) (port, error) {
	if !m.Listen.IsValid() || !m.Target.IsValid() {
		return nil, &ListenError{Mapping: m, Err: errors.New("invalid address")}
	}
	var (
		p   port
		err error
	)
	switch m.Proto {
	case TCP:
		p, err = r.listenTCP(m)
	case UDP:
		p, err = r.listenUDP(m)
	default:
		err = fmt.Errorf("protocol %q is not relayed", m.Proto)
	}
	if err != nil {
		// The system call's error says it all; the mapping says where.
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err
		}
		return nil, &ListenError{Mapping: m, Err: err}
	}
	return p, nil
}

// inNetns runs f with its sockets in the configured namespace.
func (r *Relay) inNetns(f func() error) error {
	if r.cfg.Netns == nil {
		return f()
	}
	return r.cfg.Netns.Do(func(ns.NetNS) error { return f() })
}

// network is "tcp4", "udp6"...: a socket of the address's family only.
func network(proto string, a netip.Addr) string {
	if a.Is4() {
		return proto + "4"
	}
	return proto + "6"
}

func compareKeys(a, b key) int {
	return cmp.Or(cmp.Compare(a.proto, b.proto), a.listen.Compare(b.listen))
}

// backoff is the pause after the n-th consecutive failure of an accept or read that should not
// fail (out of descriptors, say): from 5 ms doubling to one second, as net/http does.
func backoff(prev time.Duration) time.Duration {
	return min(max(2*prev, 5*time.Millisecond), time.Second)
}
