package listen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"go.uber.org/zap"
)

// KeeperConfig configures a Keeper.
type KeeperConfig struct {
	// Socket is the unix socket the keeper serves, made mode 0600; its directory is made 0700
	// when missing. On a node: <runDir>/dns-keeper.sock.
	Socket string
	Log    *zap.Logger
}

// Keeper holds duplicates of the DNS sockets while daemons come and go, so that what arrives
// while no daemon runs waits in the sockets' queues instead of being refused. It never reads
// from, writes to or polls the sockets: it only keeps them open and hands duplicates out.
type Keeper struct {
	log  *zap.Logger
	path string
	ln   *net.UnixListener
	// self is the socket file as made, so that Run removes it only while it is still its own.
	self os.FileInfo

	mu   sync.Mutex
	held []heldSocket // sorted by endpoint
}

type heldSocket struct {
	endpoint
	fd int
}

// NewKeeper claims the socket path and listens on it; the caller then calls Run. A path served
// by a live keeper is an error; a socket file left by a dead one is replaced.
func NewKeeper(cfg KeeperConfig) (*Keeper, error) {
	if cfg.Socket == "" {
		return nil, errors.New("dns-keeper: no socket path given")
	}
	log := cfg.Log
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o700); err != nil {
		return nil, fmt.Errorf("dns-keeper: %w", err)
	}
	if err := claimPath(cfg.Socket); err != nil {
		return nil, err
	}
	// The socket is made under a temporary name and renamed once it is mode 0600, so the path
	// never names a socket that others could connect to.
	tmp := cfg.Socket + ".new"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("dns-keeper: %w", err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("dns-keeper: listen on %s: %w", tmp, err)
	}
	ln.SetUnlinkOnClose(false)
	self, err := publish(tmp, cfg.Socket)
	if err != nil {
		ln.Close()
		// The half-made socket file is useless; nothing more to do if it cannot go.
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("dns-keeper: %w", err)
	}
	return &Keeper{log: log.Named("dns-keeper"), path: cfg.Socket, ln: ln, self: self}, nil
}

// claimPath makes path free for a new keeper: nothing there, or a socket no process serves.
func claimPath(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dns-keeper: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("dns-keeper: %s exists and is not a socket", path)
	}
	if c, err := net.Dial("unixpacket", path); err == nil {
		c.Close()
		return fmt.Errorf("dns-keeper: another dns-keeper serves %s", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("dns-keeper: remove stale socket: %w", err)
	}
	return nil
}

func publish(tmp, path string) (os.FileInfo, error) {
	if err := os.Chmod(tmp, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	return os.Lstat(path)
}

// Run serves daemons until ctx ends, then closes every connection and every socket it holds and
// removes its socket file. Each connection is served by a goroutine of its own, which Run waits
// for; the held sockets are guarded by one lock.
func (k *Keeper) Run(ctx context.Context) error {
	k.log.Info("serving", zap.String("socket", k.path))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopAccept := context.AfterFunc(ctx, func() { k.ln.Close() })
	defer stopAccept()

	var wg sync.WaitGroup
	var err error
	for {
		c, aerr := k.ln.AcceptUnix()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("dns-keeper: accept: %w", aerr)
			}
			break
		}
		wg.Go(func() {
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			defer c.Close()
			k.serve(c)
		})
	}
	cancel()
	wg.Wait()
	k.ln.Close()

	k.mu.Lock()
	closeAll(heldFDs(k.held))
	k.held = nil
	k.mu.Unlock()
	if fi, serr := os.Lstat(k.path); serr == nil && os.SameFile(fi, k.self) {
		if rerr := os.Remove(k.path); rerr != nil {
			err = errors.Join(err, fmt.Errorf("dns-keeper: %w", rerr))
		}
	}
	k.log.Info("stopped")
	return err
}

// serve answers one daemon's requests until it goes away or breaks the protocol.
func (k *Keeper) serve(c *net.UnixConn) {
	for {
		var req request
		fds, err := receive(c, &req)
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			closeAll(fds)
			return
		case err != nil:
			closeAll(fds)
			k.refuse(c, err.Error())
			return
		case req.Version != protocolVersion:
			closeAll(fds)
			k.refuse(c, versionError(req.Version))
			return
		}
		switch req.Op {
		case opGet:
			closeAll(fds)
			err = k.handOut(c)
		case opPut:
			err = k.store(c, fds)
		default:
			closeAll(fds)
			k.refuse(c, fmt.Sprintf("unknown op %q: want %q or %q", req.Op, opGet, opPut))
			return
		}
		if err != nil {
			k.log.Warn("answer daemon", zap.Error(err))
			return
		}
	}
}

func (k *Keeper) refuse(c *net.UnixConn, why string) {
	k.log.Warn("refused request", zap.String("reason", why))
	if err := send(c, reply{Version: protocolVersion, Error: why}, nil); err != nil {
		k.log.Debug("send refusal", zap.Error(err))
	}
}

// handOut sends duplicates of every held socket; the kernel duplicates them on the way.
func (k *Keeper) handOut(c *net.UnixConn) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := send(c, reply{Version: protocolVersion, Held: heldEndpoints(k.held)}, heldFDs(k.held)); err != nil {
		return fmt.Errorf("hand out sockets: %w", err)
	}
	k.log.Info("handed out sockets", zap.Int("count", len(k.held)))
	return nil
}

// store replaces the held sockets with fds, which must all be DNS sockets; otherwise it keeps
// what it held and answers with the reason.
func (k *Keeper) store(c *net.UnixConn, fds []int) error {
	next := make([]heldSocket, len(fds))
	for i, fd := range fds {
		e, err := describe(fd)
		if err != nil {
			closeAll(fds)
			k.refuse(c, "put: "+err.Error())
			return nil
		}
		next[i] = heldSocket{endpoint: e, fd: fd}
	}
	slices.SortFunc(next, func(a, b heldSocket) int { return compareEndpoints(a.endpoint, b.endpoint) })

	k.mu.Lock()
	old := k.held
	k.held = next
	held := heldEndpoints(next)
	k.mu.Unlock()
	// The old descriptors close after the swap: a socket both sets name stays open through the
	// daemon's own copy, one only the old set named is closed and leaves its reuseport group.
	closeAll(heldFDs(old))
	k.log.Info("holding sockets", zap.Int("count", len(next)), zap.Int("replaced", len(old)),
		zap.String("endpoints", endpointsString(held)))
	if err := send(c, reply{Version: protocolVersion, Held: held}, nil); err != nil {
		return fmt.Errorf("confirm put: %w", err)
	}
	return nil
}

func heldFDs(h []heldSocket) []int {
	fds := make([]int, len(h))
	for i, s := range h {
		fds[i] = s.fd
	}
	return fds
}

func heldEndpoints(h []heldSocket) []endpoint {
	es := make([]endpoint, len(h))
	for i, s := range h {
		es[i] = s.endpoint
	}
	return es
}
