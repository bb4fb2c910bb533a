package dns

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/zap"
	"golang.org/x/net/ipv4"
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
// budget.
func (s *Server) serveUDP(ctx context.Context, c *net.UDPConn, wg *sync.WaitGroup) {
	// ipv4.PacketConn's batch calls are plain recvmmsg/sendmmsg: they serve IPv6 sockets as well.
	pc := ipv4.NewPacketConn(c)
	in := make([]ipv4.Message, udpBatch)
	out := make([]ipv4.Message, 0, udpBatch)
	replies := make([][]byte, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, maxRequest)}
		replies[i] = make([]byte, 0, maxUDPResponse)
	}
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("read UDP", zap.Error(err))
			continue
		}
		start := time.Now()
		out = out[:0]
		for i := range n {
			req := in[i].Buffers[0][:in[i].N]
			from, ok := in[i].Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			a, q, done := s.fast(req, replies[i][:0], true)
			s.metrics.request("udp", q.Type)
			if done {
				if len(a.wire) == 0 {
					s.metrics.dropped.WithLabelValues("malformed").Inc()
					continue
				}
				replies[i] = a.wire[:0] // keep a buffer that had to grow
				out = append(out, ipv4.Message{Buffers: [][]byte{a.wire}, Addr: from})
				s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
				continue
			}
			if !s.acquireUpstream() {
				a := s.headerOnly(req, replies[i][:0], mdns.RcodeServerFailure)
				out = append(out, ipv4.Message{Buffers: [][]byte{a.wire}, Addr: from})
				s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
				continue
			}
			own := append([]byte(nil), req...)
			wg.Go(func() {
				defer s.releaseUpstream()
				a := s.slow(ctx, own, make([]byte, 0, udpLimit(q)), true)
				if len(a.wire) == 0 {
					s.metrics.dropped.WithLabelValues("malformed").Inc()
					return
				}
				if _, err := c.WriteToUDP(a.wire, from); err != nil {
					s.log.Debug("write UDP", zap.Stringer("to", from), zap.Error(err))
					return
				}
				s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
			})
		}
		for len(out) > 0 {
			sent, err := pc.WriteBatch(out, 0)
			if err != nil {
				// One bad destination must not cost the others their answers: skip it.
				s.log.Debug("write UDP", zap.Error(err))
				sent = max(sent, 1)
			}
			out = out[sent:]
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
