package localports

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// tcpPort relays the TCP connections of one mapping: one goroutine accepts, and each connection
// gets a pair, one per direction.
type tcpPort struct {
	r      *Relay
	listen netip.AddrPort
	ln     *net.TCPListener
	// ctx ends when the port closes: it stops the accept loop and the dials in flight.
	ctx    context.Context
	cancel context.CancelFunc
	// slots holds one token per connection relayed (cap MaxConns): the accept loop puts one in
	// before accepting, the connection's goroutine takes it out when done. When full, new
	// connections wait in the listener's backlog.
	slots chan struct{}

	mu      sync.Mutex
	tgt     netip.AddrPort
	conns   map[*net.TCPConn]struct{} // both ends of every connection relayed, to close on removal
	closing bool

	wg sync.WaitGroup
}

func (r *Relay) listenTCP(m Mapping) (*tcpPort, error) {
	var ln net.Listener
	if err := r.inNetns(func() (err error) {
		ln, err = net.Listen(network(TCP, m.Listen.Addr()), m.Listen.String())
		return err
	}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &tcpPort{
		r: r, listen: m.Listen, ln: ln.(*net.TCPListener), ctx: ctx, cancel: cancel,
		slots: make(chan struct{}, r.cfg.MaxConns), tgt: m.Target, conns: map[*net.TCPConn]struct{}{},
	}
	p.wg.Go(p.accept)
	return p, nil
}

func (p *tcpPort) target() netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tgt
}

func (p *tcpPort) setTarget(t netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tgt = t
}

func (p *tcpPort) close() {
	p.mu.Lock()
	p.closing = true
	for c := range p.conns {
		abort(c)
	}
	p.mu.Unlock()
	p.cancel()
	// An error only says it is closed already.
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *tcpPort) accept() {
	var delay time.Duration
	for {
		select {
		case p.slots <- struct{}{}:
		case <-p.ctx.Done():
			return
		}
		c, err := p.ln.AcceptTCP()
		if err != nil {
			<-p.slots
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, or a connection aborted before it was accepted: pause and go
			// on; the port must not stop over it.
			delay = backoff(delay)
			p.r.log.Warn("accept on relayed hostPort; retrying", zap.Stringer("listen", p.listen), zap.Error(err), zap.Duration("in", delay))
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		p.wg.Go(func() {
			defer func() { <-p.slots }()
			p.relay(c)
		})
	}
}

// relay connects to the pod and copies both ways until both directions are done.
func (p *tcpPort) relay(client *net.TCPConn) {
	target, ok := p.track(client)
	if !ok {
		abort(client)
		return
	}
	defer p.untrack(client)
	up, err := p.dial(target)
	if err != nil {
		p.r.metrics.failed(TCP, "dial")
		p.r.log.Debug("connect to the pod", zap.Stringer("listen", p.listen), zap.Stringer("client", client.RemoteAddr()),
			zap.Stringer("target", target), zap.Error(err))
		// A reset tells the client at once, as a closed port of the pod would have.
		abort(client)
		return
	}
	if _, ok := p.track(up); !ok {
		abort(up)
		return
	}
	defer p.untrack(up)
	p.r.metrics.started(TCP)
	defer p.r.metrics.ended(TCP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(up, client)
	}()
	pipe(client, up)
	<-done
}

func (p *tcpPort) dial(t netip.AddrPort) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.r.cfg.DialTimeout)
	defer cancel()
	var c net.Conn
	if err := p.r.inNetns(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network(TCP, t.Addr()), t.String())
		return err
	}); err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// track records c so that close can cut it, and returns the target to relay to; false once the
// port is closing.
func (p *tcpPort) track(c *net.TCPConn) (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return netip.AddrPort{}, false
	}
	p.conns[c] = struct{}{}
	return p.tgt, true
}

func (p *tcpPort) untrack(c *net.TCPConn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	// Closed already when the relay ended in an error.
	_ = c.Close()
}

// pipe copies src to dst until src's end of stream, then half-closes dst so that its far side
// sees the end too (CloseWrite: a FIN, the other direction keeps flowing). After an error — a
// reset, a write that failed, the port closing — both are reset, which ends the other direction
// as well.
func pipe(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		abort(dst)
		abort(src)
		return
	}
	if err := dst.CloseWrite(); err != nil {
		abort(dst)
		abort(src)
	}
}

// abort closes c with a reset (SO_LINGER 0) rather than a FIN: what was in flight is lost, and
// the peer must learn so at once.
func abort(c *net.TCPConn) {
	// Both fail only on a connection closed already, which is what is wanted.
	_ = c.SetLinger(0)
	_ = c.Close()
}
