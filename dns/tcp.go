package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// maxTCPMessage is the largest DNS message: its length travels in 16 bits.
const maxTCPMessage = 65535

// serveTCP accepts connections until ctx ends, within the connection budget: a client that opens
// more waits in the listen backlog.
func (s *Server) serveTCP(ctx context.Context, l *net.TCPListener, wg *sync.WaitGroup) {
	for {
		select {
		case s.tcpConns <- struct{}{}:
		case <-ctx.Done():
			return
		}
		c, err := l.AcceptTCP()
		if err != nil {
			<-s.tcpConns
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("accept TCP", zap.Error(err))
			continue
		}
		wg.Go(func() {
			defer func() { <-s.tcpConns }()
			s.serveConn(ctx, c)
		})
	}
}

// serveConn answers the queries of one connection in order (RFC 7766 allows any order; in order
// is simpler and a node-local client rarely pipelines). It closes the connection after TCPIdle
// without a query, or when ctx ends.
func (s *Server) serveConn(ctx context.Context, c *net.TCPConn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) }) // a failure means the connection is gone already
	defer stop()
	var lenBuf [2]byte
	req := make([]byte, maxTCPMessage)
	out := make([]byte, 0, 4096)
	for {
		if err := c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdle)); err != nil {
			return
		}
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, req[:n]); err != nil {
			s.log.Debug("read TCP query", zap.Error(err))
			return
		}
		start := time.Now()
		// Room for the length prefix, filled in once the answer's size is known.
		dst := append(out[:0], 0, 0)
		a, q, ok := s.fast(req[:n], dst, false, nil)
		s.metrics.request("tcp", q.Type)
		if !ok {
			if !s.acquireUpstream() {
				return
			}
			a = s.slow(ctx, req[:n], dst, false)
			s.releaseUpstream()
		}
		if len(a.wire) <= 2 {
			s.metrics.dropped.WithLabelValues("malformed").Inc()
			return
		}
		binary.BigEndian.PutUint16(a.wire, uint16(len(a.wire)-2))
		if err := c.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdle)); err != nil {
			return
		}
		if _, err := c.Write(a.wire); err != nil {
			s.log.Debug("write TCP answer", zap.Error(err))
			return
		}
		s.metrics.response(a.rcode, a.source, time.Since(start).Seconds())
		out = a.wire[:0]
	}
}
