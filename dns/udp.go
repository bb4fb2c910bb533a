package dns

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/wire"
	"github.com/nodenet/nodenet/internal/mmsg"
)

const (
	// maxRequest is the largest request read; DNS queries are a few dozen bytes, and anything
	// longer than this is not one.
	maxRequest = 4096
	// udpBatch is how many datagrams one system call reads or writes (recvmmsg, sendmmsg): under
	// load the per-packet cost of the system calls is most of a query's cost.
	udpBatch = 32
)

// serveUDP reads one socket until ctx ends. Answers from memory are sent from this goroutine, a
// batch at a time; queries that need an upstream get a goroutine each, within the upstream
// budget. Nothing on the path of an answer from memory allocates: at a hundred thousand queries
// a second, garbage meant several collections a second, each stretching queries' latency.
func (s *Server) serveUDP(ctx context.Context, c *net.UDPConn, wg *sync.WaitGroup) {
	rc, err := c.SyscallConn()
	if err != nil {
		s.log.Error("UDP socket without a file descriptor", zap.Error(err))
		return
	}
	in := mmsg.NewReader(udpBatch, maxRequest)
	out := mmsg.NewWriter(udpBatch)
	names := wire.NewNames()
	replies := make([][]byte, udpBatch)
	for i := range replies {
		replies[i] = make([]byte, 0, maxUDPResponse)
	}
	for {
		n, err := in.Read(rc)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("read UDP", zap.Error(err))
			continue
		}
		start := time.Now()
		for i := range n {
			req := in.Payload(i)
			a, q, done := s.fast(req, replies[i][:0], true, names)
			s.metrics.request("udp", q.Type)
			if done {
				if len(a.wire) == 0 {
					s.metrics.dropped.WithLabelValues("malformed").Inc()
					continue
				}
				replies[i] = a.wire[:0] // keep a buffer that had to grow
				out.Reply(a.wire, in, i)
				s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
				continue
			}
			if !s.acquireUpstream() {
				a := s.headerOnly(req, replies[i][:0], mdns.RcodeServerFailure)
				out.Reply(a.wire, in, i)
				s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
				continue
			}
			own, from := append([]byte(nil), req...), in.Peer(i)
			wg.Go(func() {
				defer s.releaseUpstream()
				a := s.slow(ctx, own, make([]byte, 0, udpLimit(q)), true)
				if len(a.wire) == 0 {
					s.metrics.dropped.WithLabelValues("malformed").Inc()
					return
				}
				if _, err := c.WriteToUDPAddrPort(a.wire, from); err != nil {
					s.log.Debug("write UDP", zap.Stringer("to", from), zap.Error(err))
					return
				}
				s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
			})
		}
		// One refused destination must not cost the others their answers: Flush skips it.
		if err := out.Flush(rc); err != nil {
			s.log.Debug("write UDP", zap.Error(err))
		}
	}
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
