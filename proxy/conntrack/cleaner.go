// Package conntrack deletes stale conntrack entries of Services, as
// kube-proxy's conntrack cleanup does.
//
// The nftables rules decide a UDP flow's backend once, on its first packet;
// the conntrack entry then carries every later packet to that backend. When
// the backend stops serving, a UDP client that keeps sending keeps the
// entry alive and never reaches the new backends. After each sync the
// proxy's owner passes the State whose rules are now in the kernel to
// Clean, which reads the conntrack table once and deletes the entries of
// Service frontends whose reply comes from anything but a serving endpoint.
//
// Package proxy does not import this one; the daemon wires a Cleaner beside
// it.
package conntrack

import (
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/conntrack"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/proxy"
)

// table is the part of the conntrack netlink API the Cleaner uses.
type table interface {
	Dump(*conntrack.DumpOptions) ([]conntrack.Flow, error)
	Delete(conntrack.Flow) error
	Close() error
}

var _ table = (*conntrack.Conn)(nil)

// Config configures a Cleaner.
type Config struct {
	// NetNS is a file descriptor of the network namespace whose conntrack
	// table is cleaned. 0 means the namespace of the thread calling New,
	// which for the daemon is the node's.
	NetNS int
	Log   *zap.Logger // required
	// Registerer receives the Cleaner's metrics; nil keeps them
	// unexported.
	Registerer prometheus.Registerer
}

// Cleaner deletes stale conntrack entries. It is owned by the goroutine
// that syncs the proxy: Clean and Close must not run concurrently.
type Cleaner struct {
	table table
	log   *zap.Logger
	m     *metrics
	// done is what the last successful Clean made true of the table; nil
	// before the first one.
	done wanted
}

// New opens a conntrack netlink socket in cfg.NetNS.
func New(cfg Config) (*Cleaner, error) {
	conn, err := conntrack.Dial(&netlink.Config{NetNS: cfg.NetNS})
	if err != nil {
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	return newCleaner(conn, cfg), nil
}

func newCleaner(t table, cfg Config) *Cleaner {
	c := &Cleaner{table: t, log: cfg.Log.Named("conntrack"), m: newMetrics()}
	if cfg.Registerer != nil {
		c.m.register(cfg.Registerer)
	}
	return c
}

// Close closes the netlink socket.
func (c *Cleaner) Close() error {
	return c.table.Close()
}

// Clean deletes the UDP and SCTP entries that were sent to a frontend of a
// Service in st (cluster, external or load-balancer IP and port, or node
// port) and are answered by something other than a serving endpoint of
// that port, in either IP family. Call it after the rules for st are in
// the kernel, so that the entries created from then on go to the
// endpoints of st.
//
// The table is read once per call. When the frontends and endpoints are
// those of the last successful Clean it is not read at all: since then the
// rules sent new flows only to those endpoints. After an error the next
// Clean reads it again, so the caller retries by calling Clean again.
// deleted counts the entries this call removed.
func (c *Cleaner) Clean(st proxy.State) (deleted int, err error) {
	w := wantedOf(st)
	if c.done != nil && w.equal(c.done) {
		return 0, nil
	}
	if len(w) == 0 {
		c.done = w
		return 0, nil
	}
	start := time.Now()
	// One dump holds both families, so the cost does not grow with the
	// number of Services.
	flows, err := c.table.Dump(nil)
	if err != nil {
		c.m.failures.Inc()
		return 0, fmt.Errorf("dump conntrack table: %w", err)
	}
	var failed int
	var firstErr error
	for _, f := range flows {
		if !w.stale(f) {
			continue
		}
		// The kernel looks the entry up by its tuple. An entry that
		// expired since the dump is no failure: it is gone as wanted.
		err := c.table.Delete(f)
		switch {
		case err == nil:
			deleted++
			c.log.Debug("deleted stale entry", zap.Stringer("original", f.TupleOrig), zap.Stringer("reply", f.TupleReply))
		case errors.Is(err, unix.ENOENT):
		default:
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("delete %s: %w", f.TupleOrig, err)
			}
		}
	}
	c.m.deleted.Add(float64(deleted))
	if failed > 0 {
		c.m.failures.Inc()
		// One error stands for all: they tend to share a cause, and a
		// large table could otherwise make the message huge.
		return deleted, fmt.Errorf("%d of %d stale conntrack entries not deleted: %w", failed, failed+deleted, firstErr)
	}
	c.done = w
	fields := []zap.Field{zap.Int("entries", len(flows)), zap.Int("deleted", deleted), zap.Duration("took", time.Since(start))}
	if deleted > 0 {
		c.log.Info("deleted stale conntrack entries", fields...)
	} else {
		c.log.Debug("no stale conntrack entries", fields...)
	}
	return deleted, nil
}
