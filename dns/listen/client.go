package listen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// incompatibleKeeperError is a keeper that refuses this daemon's requests or speaks another
// protocol version. Open fails on it rather than run beside a keeper whose sockets it cannot
// replace: those would keep taking a share of the queries and never answer them.
type incompatibleKeeperError struct {
	socket, reason string
}

func (e *incompatibleKeeperError) Error() string {
	return fmt.Sprintf("dns-keeper at %s: %s", e.socket, e.reason)
}

func dial(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// exchange sends one request and reads the answer, within exchangeTimeout and ctx. The
// descriptors that came with the answer are the caller's, even on error.
func exchange(ctx context.Context, c *net.UnixConn, path string, req request, fds []int) (reply, []int, error) {
	deadline := time.Now().Add(exchangeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetDeadline(deadline); err != nil {
		return reply{}, nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		// Unblocks the read below; the error it then returns is ctx's concern.
		_ = c.SetDeadline(time.Now())
	})
	defer stop()
	if err := send(c, req, fds); err != nil {
		return reply{}, nil, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	var r reply
	got, err := receive(c, &r)
	if err != nil {
		return reply{}, got, fmt.Errorf("read answer to %s: %w", req.Op, err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return reply{}, got, err
	}
	switch {
	case r.Version != protocolVersion:
		return reply{}, got, &incompatibleKeeperError{path, versionError(r.Version)}
	case r.Error != "":
		return reply{}, got, &incompatibleKeeperError{path, r.Error}
	}
	return r, got, nil
}

// fetch connects to the keeper and takes duplicates of everything it holds.
func fetch(ctx context.Context, path string) (*net.UnixConn, []int, error) {
	c, err := dial(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	r, fds, err := exchange(ctx, c, path, request{Version: protocolVersion, Op: opGet}, nil)
	if err == nil && len(fds) != len(r.Held) {
		err = fmt.Errorf("keeper at %s sent %d descriptors for %d sockets", path, len(fds), len(r.Held))
	}
	if err != nil {
		closeAll(fds)
		c.Close()
		return nil, nil, err
	}
	return c, fds, nil
}

// deposit gives the keeper duplicates of s's sockets in place of whatever it held.
func (s *Sockets) deposit(ctx context.Context, c *net.UnixConn) error {
	var fds []int
	defer func() { closeAll(fds) }()
	var raws []syscall.RawConn
	for _, u := range s.UDP {
		rc, err := u.SyscallConn()
		if err != nil {
			return err
		}
		raws = append(raws, rc)
	}
	for _, l := range s.TCP {
		rc, err := l.SyscallConn()
		if err != nil {
			return err
		}
		raws = append(raws, rc)
	}
	var want []endpoint
	for _, rc := range raws {
		var dup int
		var err error
		cerr := rc.Control(func(fd uintptr) {
			// A duplicate of our own, rather than os.File.Fd, which would switch the socket,
			// shared with the running daemon's reads, to blocking mode.
			dup, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		})
		if err = errors.Join(cerr, err); err != nil {
			return fmt.Errorf("duplicate socket: %w", err)
		}
		fds = append(fds, dup)
		e, err := describe(dup)
		if err != nil {
			return err
		}
		want = append(want, e)
	}
	r, got, err := exchange(ctx, c, s.keeperPath, request{Version: protocolVersion, Op: opPut}, fds)
	closeAll(got)
	if err != nil {
		return err
	}
	if want = sortedEndpoints(want); !slices.Equal(r.Held, want) {
		return fmt.Errorf("keeper holds %s after the deposit, want %s", endpointsString(r.Held), endpointsString(want))
	}
	return nil
}

// keepDeposited keeps the keeper holding s's sockets: it waits for the keeper connection to
// end, then reconnects with backoff and deposits again, until stopped. conn is nil when Open
// could not reach the keeper.
func (s *Sockets) keepDeposited(ctx context.Context, conn *net.UnixConn) {
	defer close(s.done)
	for {
		if conn != nil {
			s.waitGone(ctx, conn)
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("DNS socket keeper went away; depositing the sockets again once one answers",
				zap.String("socket", s.keeperPath))
		}
		if conn = s.reconnect(ctx); conn == nil {
			return
		}
	}
}

// waitGone blocks until the keeper closes conn or ctx ends, and closes conn. The keeper never
// speaks first, so anything read is the end of the connection.
func (s *Sockets) waitGone(ctx context.Context, conn *net.UnixConn) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var r reply
	fds, err := receive(conn, &r)
	closeAll(fds)
	if err == nil {
		s.log.Warn("DNS socket keeper spoke unasked; reconnecting")
	}
	conn.Close()
}

// reconnect dials the keeper and deposits s's sockets, retrying with backoff; it returns the
// connection, or nil once ctx ends.
func (s *Sockets) reconnect(ctx context.Context) *net.UnixConn {
	delay := minBackoff
	for attempt := 1; ; attempt++ {
		conn, err := dial(ctx, s.keeperPath)
		if err == nil {
			if err = s.deposit(ctx, conn); err == nil {
				s.log.Info("deposited DNS sockets with the keeper", zap.String("socket", s.keeperPath),
					zap.Int("sockets", len(s.UDP)+len(s.TCP)))
				return conn
			}
			conn.Close()
		}
		// The first failure after a loss has been logged by the caller or by Open; a keeper
		// that refuses this daemon is worth a warning each time.
		var incompatible *incompatibleKeeperError
		if errors.As(err, &incompatible) {
			s.log.Warn("deposit DNS sockets", zap.Error(err))
		} else {
			s.log.Debug("reach DNS socket keeper", zap.Int("attempt", attempt), zap.Error(err))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, maxBackoff)
	}
}
