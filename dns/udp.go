package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/zap"
)

// maxRequest is the largest request read; DNS queries are a few dozen bytes, and anything
// longer than this is not one.
const maxRequest = 4096

// serveUDP reads one socket until ctx ends. Answers from memory are sent from this goroutine;
// queries that need an upstream get a goroutine each, within the upstream budget.
func (s *Server) serveUDP(ctx context.Context, c *net.UDPConn, wg *sync.WaitGroup) {
	buf := make([]byte, maxRequest)
	out := make([]byte, 0, maxUDPResponse)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("read UDP", zap.Error(err))
			continue
		}
		start := time.Now()
		req := buf[:n]
		a, q, ok := s.fast(req, out[:0], true)
		s.metrics.request("udp", q.Type)
		if ok {
			s.sendUDP(c, from, a, start)
			continue
		}
		if !s.acquireUpstream() {
			s.sendUDP(c, from, s.headerOnly(req, out[:0], mdns.RcodeServerFailure), start)
			continue
		}
		own := append([]byte(nil), req...)
		wg.Go(func() {
			defer s.releaseUpstream()
			a := s.slow(ctx, own, make([]byte, 0, udpLimit(q)), true)
			s.sendUDP(c, from, a, start)
		})
	}
}

func (s *Server) sendUDP(c *net.UDPConn, to netip.AddrPort, a answer, start time.Time) {
	if len(a.wire) == 0 {
		s.metrics.dropped.WithLabelValues("malformed").Inc()
		return
	}
	if _, err := c.WriteToUDPAddrPort(a.wire, to); err != nil {
		s.log.Debug("write UDP", zap.Stringer("to", to), zap.Error(err))
		return
	}
	s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
}

// acquireUpstream takes a place among the queries waiting for an upstream; false when all are
// taken, and the query is answered SERVFAIL.
func (s *Server) acquireUpstream() bool {
	select {
	case s.upstream <- struct{}{}:
		s.metrics.inFlight.Inc()
		return true
	default:
		s.metrics.dropped.WithLabelValues("upstream_budget").Inc()
		return false
	}
}

func (s *Server) releaseUpstream() {
	<-s.upstream
	s.metrics.inFlight.Dec()
}
