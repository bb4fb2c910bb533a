package localports

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// maxDatagram is the largest UDP payload: nothing the client or the pod sends is cut.
const maxDatagram = 65535

// udpPort relays the datagrams of one mapping. Every client address gets a session: a socket
// connected to the pod, so the pod's replies come back on it and go out of the listening socket
// to that client, as conntrack would pair them. One goroutine reads the listening socket, one
// per session reads the pod's replies and ends the session once it has been idle for
// UDPIdleTimeout.
type udpPort struct {
	r      *Relay
	listen netip.AddrPort
	pc     *net.UDPConn
	// start is what session times count from, on the monotonic clock.
	start time.Time
	// done is closed when the port closes, to end the read loop's pause after an error.
	done chan struct{}

	mu       sync.Mutex
	tgt      netip.AddrPort
	sessions map[netip.AddrPort]*udpSession // by client address
	closing  bool

	wg sync.WaitGroup
}

type udpSession struct {
	client netip.AddrPort
	target netip.AddrPort
	up     *net.UDPConn
	// last is when the last datagram went either way, as time since the port's start.
	last atomic.Int64
}

func (r *Relay) listenUDP(m Mapping) (*udpPort, error) {
	var pc *net.UDPConn
	if err := r.inNetns(func() (err error) {
		pc, err = net.ListenUDP(network(UDP, m.Listen.Addr()), net.UDPAddrFromAddrPort(m.Listen))
		return err
	}); err != nil {
		return nil, err
	}
	p := &udpPort{r: r, listen: m.Listen, pc: pc, start: time.Now(), done: make(chan struct{}), tgt: m.Target,
		sessions: map[netip.AddrPort]*udpSession{}}
	p.wg.Go(p.serve)
	return p, nil
}

func (p *udpPort) target() netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tgt
}

// setTarget also ends the sessions to the previous target: a client that keeps its address
// reaches the new one with its next datagram, as the kernel path makes it by deleting the
// conntrack entries.
func (p *udpPort) setTarget(t netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tgt = t
	for _, s := range p.sessions {
		if s.target != t {
			p.endLocked(s)
		}
	}
}

func (p *udpPort) close() {
	p.mu.Lock()
	p.closing = true
	for _, s := range p.sessions {
		p.endLocked(s)
	}
	p.mu.Unlock()
	close(p.done)
	// An error only says it is closed already.
	_ = p.pc.Close()
	p.wg.Wait()
}

// serve reads the client's datagrams and sends each on its session's socket.
func (p *udpPort) serve() {
	buf := make([]byte, maxDatagram)
	var delay time.Duration
	for {
		n, client, err := p.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = backoff(delay)
			p.r.log.Warn("read on relayed hostPort; retrying", zap.Stringer("listen", p.listen), zap.Error(err), zap.Duration("in", delay))
			select {
			case <-p.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		s := p.session(client)
		if s == nil {
			continue
		}
		if _, err := s.up.Write(buf[:n]); err != nil {
			// Most often ECONNREFUSED: the pod answered an earlier datagram with port
			// unreachable. This one is lost, as it would have been without the relay.
			p.r.log.Debug("send to the pod", zap.Stringer("listen", p.listen), zap.Stringer("client", client),
				zap.Stringer("target", s.target), zap.Error(err))
		}
	}
}

// session returns the client's session, starting one if it has none; nil when the datagram is
// to be dropped.
func (p *udpPort) session(client netip.AddrPort) *udpSession {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil
	}
	if s, ok := p.sessions[client]; ok {
		p.touch(s)
		return s
	}
	if len(p.sessions) >= p.r.cfg.MaxSessions {
		p.r.metrics.failed(UDP, "sessions")
		p.r.log.Debug("too many UDP sessions; datagram dropped", zap.Stringer("listen", p.listen), zap.Stringer("client", client),
			zap.Int("sessions", len(p.sessions)))
		return nil
	}
	var up *net.UDPConn
	if err := p.r.inNetns(func() (err error) {
		up, err = net.DialUDP(network(UDP, p.tgt.Addr()), nil, net.UDPAddrFromAddrPort(p.tgt))
		return err
	}); err != nil {
		p.r.metrics.failed(UDP, "dial")
		p.r.log.Warn("open a UDP socket to the pod; datagram dropped", zap.Stringer("listen", p.listen),
			zap.Stringer("target", p.tgt), zap.Error(err))
		return nil
	}
	s := &udpSession{client: client, target: p.tgt, up: up}
	p.touch(s)
	p.sessions[client] = s
	p.r.metrics.started(UDP)
	p.wg.Go(func() { p.replies(s) })
	return s
}

func (p *udpPort) touch(s *udpSession) { s.last.Store(int64(time.Since(p.start))) }

func (p *udpPort) lastActive(s *udpSession) time.Time {
	return p.start.Add(time.Duration(s.last.Load()))
}

// replies sends the pod's datagrams to the client until the session ends: idle for
// UDPIdleTimeout, or its socket closed by setTarget or close.
func (p *udpPort) replies(s *udpSession) {
	buf := make([]byte, maxDatagram)
	idle := p.r.cfg.UDPIdleTimeout
	for {
		if err := s.up.SetReadDeadline(p.lastActive(s).Add(idle)); err != nil {
			p.end(s) // closed
			return
		}
		n, err := s.up.Read(buf)
		switch {
		case err == nil:
			p.touch(s)
			if _, err := p.pc.WriteToUDPAddrPort(buf[:n], s.client); err != nil {
				p.r.log.Debug("send to the client", zap.Stringer("listen", p.listen), zap.Stringer("client", s.client), zap.Error(err))
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			if p.expire(s, idle) {
				return
			}
		case errors.Is(err, syscall.ECONNREFUSED):
			// The pod's port was closed when an earlier datagram came (ICMP port unreachable).
			// The client is not told, as a UDP client behind DNAT is not; its next datagram may
			// find the port open.
		default:
			p.end(s)
			return
		}
	}
}

// expire ends the session if nothing went either way for idle; a datagram that came meanwhile
// keeps it.
func (p *udpPort) expire(s *udpSession, idle time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.lastActive(s)) < idle {
		return false
	}
	p.endLocked(s)
	p.r.log.Debug("UDP session expired", zap.Stringer("listen", p.listen), zap.Stringer("client", s.client))
	return true
}

func (p *udpPort) end(s *udpSession) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLocked(s)
}

// endLocked forgets the session and closes its socket, which ends its replies goroutine. Ending
// it twice is harmless.
func (p *udpPort) endLocked(s *udpSession) {
	if p.sessions[s.client] == s {
		delete(p.sessions, s.client)
		p.r.metrics.ended(UDP)
	}
	// An error only says it is closed already.
	_ = s.up.Close()
}
