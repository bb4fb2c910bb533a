// Package cniexec is the daemon side of the CNI shim: a unix-socket server that turns ADD, DEL,
// CHECK, STATUS and GC into IPAM allocations and pod plumbing, installs the shim and the conflist
// for the container runtime, and reconciles what a crash or a missed DEL left behind.
package cniexec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/cniexec/wire"
	"github.com/nodenet/nodenet/ipam"
	"github.com/nodenet/nodenet/routing"
)

// Allocator is the part of *ipam.Allocator the server uses.
type Allocator interface {
	Allocate(ipam.Request) (ipam.Allocation, error)
	Release(containerID, ifName string) (ipam.Allocation, bool, error)
	Get(containerID, ifName string) (ipam.Allocation, bool)
	List() []ipam.Allocation
	Gateways() []netip.Prefix
}

// Plumber is the part of *routing.Local the server uses: veth pairs on the bridge.
type Plumber interface {
	AttachPod(routing.PodNetwork) (routing.PodInterfaces, error)
	DetachPod(hostVeth string) error
	CheckPod(routing.PodNetwork) error
	PodVeths() ([]string, error)
}

// PortMapper is the part of *routing.HostPorts the server uses: the pods' hostPort mappings (the
// portMappings capability).
type PortMapper interface {
	Map(att routing.Attachment, podIPs []netip.Addr, mappings []routing.PortMapping) error
	Unmap(att routing.Attachment) error
	Check(att routing.Attachment, podIPs []netip.Addr, mappings []routing.PortMapping) error
	Adopt(live map[routing.Attachment][]netip.Addr) error
}

var (
	_ Allocator  = (*ipam.Allocator)(nil)
	_ Plumber    = (*routing.Local)(nil)
	_ PortMapper = (*routing.HostPorts)(nil)
)

// Config is what the server needs besides its dependencies.
type Config struct {
	// Socket is the unix socket path the shim dials; its directory is created 0750.
	Socket string
	// Bridge is the node bridge the pods attach to, as routing.Local.Ensure returned it.
	Bridge routing.Bridge
	// NetworkName is the conflist's network name; requests for another network are refused.
	NetworkName string
	// HostPorts programs the pods' hostPort mappings. Without it an ADD that asks for any fails.
	HostPorts PortMapper
}

// connTimeout bounds one shim exchange on the daemon side, so a stuck client cannot hold a
// goroutine forever.
const connTimeout = 3 * time.Minute

// requestReadTimeout bounds how long a client may take to send its request.
const requestReadTimeout = 10 * time.Second

// containerLocks serialises commands for one container without a global lock: ADD, CHECK and DEL
// of different containers run in parallel.
const containerLocks = 64

// Server answers the shim. Build it with New, then Run it.
type Server struct {
	cfg     Config
	ipam    Allocator
	pods    Plumber
	log     *zap.Logger
	metrics *Metrics

	listener net.Listener
	ready    atomic.Bool
	locks    [containerLocks]sync.Mutex
}

// New creates the socket (replacing a stale one left by a previous daemon) so the caller learns
// about a bad path at once; Run serves it.
func New(cfg Config, alloc Allocator, pods Plumber, metrics *Metrics, log *zap.Logger) (*Server, error) {
	if cfg.NetworkName == "" {
		cfg.NetworkName = "nodenet"
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	// Only a socket is replaced: a regular file or directory at that path is a configuration
	// mistake to report, not something to delete.
	if st, err := os.Lstat(cfg.Socket); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("socket path %s exists and is not a socket", cfg.Socket)
		}
		if err := os.Remove(cfg.Socket); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// The socket is created under a restrictive umask so there is no window in which another
	// user could connect before the chmod.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", cfg.Socket)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Socket, err)
	}
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return &Server{cfg: cfg, ipam: alloc, pods: pods, metrics: metrics, log: log.Named("cni"), listener: l}, nil
}

// SetReady makes STATUS succeed; until then it answers code 50.
func (s *Server) SetReady() { s.ready.Store(true) }

// Run serves until ctx is cancelled, then closes the socket and waits for requests in flight so
// no half-done ADD is abandoned.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { s.listener.Close() })
	defer stop()
	defer wg.Wait()
	// Also on an accept error: clients must fail fast ("try again later"), not queue on a socket
	// nobody serves. Closing twice after cancellation is harmless.
	defer s.listener.Close()
	delay := time.Duration(0)
	for {
		conn, err := s.listener.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors in a burst of ADDs, or one aborted connection: back off and go
			// on, as net/http does; the node's networking must not stop over it.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept on CNI socket; retrying", zap.Error(err), zap.Duration("in", delay))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(conn.(*net.UnixConn))
		}()
	}
}

func (s *Server) serve(conn *net.UnixConn) {
	defer conn.Close()
	// The shim writes its request at once: a client that sends nothing is cut off quickly, so it
	// cannot hold up a shutdown. Handling the request may then take up to connTimeout.
	if err := conn.SetDeadline(time.Now().Add(requestReadTimeout)); err != nil {
		s.log.Warn("set deadline on shim connection", zap.Error(err))
		return
	}
	if err := checkPeer(conn); err != nil {
		s.log.Warn("refused shim connection", zap.Error(err))
		s.reply(conn, wire.Response{Error: &wire.Error{Code: wire.CodeInvalidEnvironment, Msg: "permission denied", Details: err.Error()}})
		return
	}
	req, netns, err := readRequest(conn)
	if netns != nil {
		defer netns.Close()
	}
	if err != nil {
		e := &wire.Error{Code: wire.CodeDecodeFailure, Msg: "decode shim request", Details: err.Error()}
		s.metrics.observe("", e, 0)
		s.reply(conn, wire.Response{Error: e})
		return
	}
	if err := conn.SetDeadline(time.Now().Add(connTimeout)); err != nil {
		s.log.Warn("set deadline on shim connection", zap.Error(err))
		return
	}
	start := time.Now()
	resp := s.handle(req, netns)
	s.metrics.observe(req.Command, resp.Error, time.Since(start))
	s.reply(conn, resp)
}

// readRequest reads one request and the network namespace descriptor the shim may have attached
// to its first bytes. Descriptors beyond the one expected are closed at once.
func readRequest(conn *net.UnixConn) (wire.Request, *os.File, error) {
	var req wire.Request
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return req, nil, err
	}
	var netns *os.File
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return req, nil, fmt.Errorf("parse control message: %w", err)
		}
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				if netns == nil {
					netns = os.NewFile(uintptr(fd), "netns")
				} else {
					unix.Close(fd)
				}
			}
		}
	}
	rest := io.LimitReader(conn, 2*wire.MaxRequestBytes)
	if err := json.NewDecoder(io.MultiReader(bytes.NewReader(buf[:n]), rest)).Decode(&req); err != nil {
		return req, netns, err
	}
	if req.NetnsFD && netns == nil {
		return req, nil, errors.New("request announces a network namespace descriptor but carries none")
	}
	return req, netns, nil
}

func (s *Server) reply(conn net.Conn, resp wire.Response) {
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		s.log.Warn("write shim response", zap.Error(err))
	}
}

// checkPeer admits root and the daemon's own user: only they may change pod networking.
func checkPeer(conn *net.UnixConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("read peer credentials: %w", credErr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("peer uid %d (pid %d) is neither root nor the daemon's user", cred.Uid, cred.Pid)
	}
	return nil
}

// lockContainer returns the lock that serialises commands for one container.
func (s *Server) lockContainer(containerID string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(containerID))
	return &s.locks[h.Sum32()%containerLocks]
}
