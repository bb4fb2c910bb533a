package ipam

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

const (
	dbFile = "ipam.db"
	// lockTimeout bounds the wait for bbolt's file lock: a second daemon on
	// the same stateDir should fail at once, not hang.
	lockTimeout = time.Second
)

// Allocation is the set of addresses held by one pod interface.
type Allocation struct {
	ContainerID, IfName, Netns string
	// IPs holds one address per family, with the prefix length of its range
	// (10.244.1.7/24), in the order the families first appear in
	// Config.Ranges.
	IPs     []netip.Prefix
	Created time.Time
}

func (al Allocation) clone() Allocation {
	al.IPs = slices.Clone(al.IPs)
	return al
}

// ExhaustedError says that a range has no free address. When every range of
// a family is full, Allocate returns one per range, joined.
type ExhaustedError struct{ Range netip.Prefix }

func (e *ExhaustedError) Error() string {
	return "no free address in range " + e.Range.String()
}

var errClosed = errors.New("ipam allocator is closed")

// Allocator hands out pod addresses from the node's ranges and keeps them in
// a bbolt database, so that they survive restarts and crashes. See the
// package documentation for why the state is crash-safe.
type Allocator struct {
	log    *zap.Logger
	db     *bolt.DB
	ranges []netip.Prefix
	pools  []*pool   // one per range, in the same order
	groups [][]*pool // pools by family, families in order of first appearance

	mu     sync.Mutex
	allocs map[string]Allocation // committed allocations by key
	// held maps every address of a committed allocation, or of one whose
	// commit is in flight, to its key. An address is added before its commit
	// starts and removed only after its release is durable, so no address is
	// handed out twice even across a crash.
	held map[netip.Addr]string
	// busy holds, per key with a commit in flight, a channel closed when the
	// commit ends. Other calls for that key wait on it instead of racing.
	busy   map[string]chan struct{}
	closed bool
	// commits counts commits in flight, so that Close can wait for them.
	commits sync.WaitGroup
}

// Open opens (creating if needed) the database in cfg.StateDir and rebuilds
// the in-memory state from it. It fails after one second if another process
// holds the database.
func Open(cfg Config, log *zap.Logger) (*Allocator, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("ipam config: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(cfg.StateDir, dbFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: locked by another process (is another nodenet daemon using this stateDir?): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	a := &Allocator{
		log:    log.Named("ipam"),
		db:     db,
		ranges: slices.Clone(cfg.Ranges),
		allocs: make(map[string]Allocation),
		held:   make(map[netip.Addr]string),
		busy:   make(map[string]chan struct{}),
	}
	for _, r := range cfg.Ranges {
		p := newPool(r)
		a.pools = append(a.pools, p)
		i := slices.IndexFunc(a.groups, func(g []*pool) bool { return g[0].is4 == p.is4 })
		if i < 0 {
			a.groups = append(a.groups, []*pool{p})
		} else {
			a.groups[i] = append(a.groups[i], p)
		}
	}
	if err := db.Update(a.load); err != nil {
		return nil, errors.Join(fmt.Errorf("load %s: %w", path, err), db.Close())
	}
	if err := syncDir(cfg.StateDir); err != nil {
		return nil, errors.Join(fmt.Errorf("sync state dir: %w", err), db.Close())
	}
	a.log.Info("opened state", zap.String("path", path), zap.Int("allocations", len(a.allocs)),
		zap.Stringers("ranges", a.ranges))
	return a, nil
}

// load rebuilds the in-memory state from the database. It runs before the
// allocator is shared, so it does not take a.mu.
func (a *Allocator) load(tx *bolt.Tx) error {
	if err := prepare(tx); err != nil {
		return err
	}
	err := tx.Bucket(bucketAllocations).ForEach(func(k, v []byte) error {
		al, err := decodeAllocation(k, v)
		if err != nil {
			return err
		}
		for _, ip := range al.IPs {
			// Cannot happen unless something other than this package wrote
			// the file. Refuse to start rather than hand out more duplicates.
			if other, dup := a.held[ip.Addr()]; dup {
				return fmt.Errorf("address %s is held by both %s and %s", ip.Addr(), keyName(other), keyName(string(k)))
			}
			a.holdLocked(ip.Addr(), string(k))
		}
		a.allocs[string(k)] = al
		return nil
	})
	if err != nil {
		return err
	}
	// Restore the cursors of the configured ranges and drop those of ranges
	// that are gone, so the file does not grow as podCIDRs change.
	cursors := tx.Bucket(bucketCursors)
	var stale [][]byte
	err = cursors.ForEach(func(k, v []byte) error {
		i := slices.IndexFunc(a.pools, func(p *pool) bool { return p.prefix.String() == string(k) })
		if i < 0 {
			stale = append(stale, k)
			return nil
		}
		addr, err := netip.ParseAddr(string(v))
		if err != nil {
			return fmt.Errorf("cursor of %s: %w", k, err)
		}
		a.pools[i].restoreCursor(addr)
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range stale {
		if err := cursors.Delete(k); err != nil {
			return fmt.Errorf("delete cursor %s: %w", k, err)
		}
	}
	return nil
}

// Allocate returns one address from each family present in the ranges. If
// the key already has an allocation it is returned unchanged, so a retried
// ADD is harmless. The allocation is durable when Allocate returns.
func (a *Allocator) Allocate(req Request) (Allocation, error) {
	key, err := keyOf(req.ContainerID, req.IfName)
	if err != nil {
		return Allocation{}, err
	}
	a.mu.Lock()
	if err := a.waitIdleLocked(key); err != nil {
		a.mu.Unlock()
		return Allocation{}, err
	}
	if al, ok := a.allocs[key]; ok {
		a.mu.Unlock()
		return al.clone(), nil
	}
	ips, pools, err := a.reserveLocked(key)
	if err != nil {
		a.mu.Unlock()
		return Allocation{}, err
	}
	al := Allocation{
		ContainerID: req.ContainerID,
		IfName:      req.IfName,
		Netns:       req.Netns,
		IPs:         ips,
		// UTC without the monotonic reading: the value that comes back from
		// the database after a restart.
		Created: time.Now().UTC().Round(0),
	}
	done, solo := a.beginLocked(key)
	a.mu.Unlock()

	value, err := encodeAllocation(al)
	if err == nil {
		err = a.commit(solo, func(tx *bolt.Tx) error { return putAllocation(tx, key, value, pools) })
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	a.endLocked(key, done)
	if err != nil {
		for _, ip := range ips {
			a.unholdLocked(ip.Addr())
		}
		return Allocation{}, fmt.Errorf("store allocation %s/%s: %w", req.ContainerID, req.IfName, err)
	}
	a.allocs[key] = al
	a.log.Debug("allocated", zap.String("containerID", req.ContainerID), zap.String("ifName", req.IfName),
		zap.Stringers("ips", ips))
	return al.clone(), nil
}

// Release frees the allocation of the key and returns it; false means there
// was none. The release is durable when Release returns.
func (a *Allocator) Release(containerID, ifName string) (Allocation, bool, error) {
	key, err := keyOf(containerID, ifName)
	if err != nil {
		return Allocation{}, false, err
	}
	a.mu.Lock()
	if err := a.waitIdleLocked(key); err != nil {
		a.mu.Unlock()
		return Allocation{}, false, err
	}
	al, ok := a.allocs[key]
	if !ok {
		a.mu.Unlock()
		return Allocation{}, false, nil
	}
	done, solo := a.beginLocked(key)
	a.mu.Unlock()

	// The addresses stay held until the delete is durable: handing one out
	// earlier and crashing before the delete commits would leave it in two
	// allocations.
	err = a.commit(solo, func(tx *bolt.Tx) error { return deleteAllocation(tx, key) })

	a.mu.Lock()
	defer a.mu.Unlock()
	a.endLocked(key, done)
	if err != nil {
		return Allocation{}, false, fmt.Errorf("release %s/%s: %w", containerID, ifName, err)
	}
	delete(a.allocs, key)
	for _, ip := range al.IPs {
		a.unholdLocked(ip.Addr())
	}
	a.log.Debug("released", zap.String("containerID", containerID), zap.String("ifName", ifName),
		zap.Stringers("ips", al.IPs))
	return al.clone(), true, nil
}

// Get returns the committed allocation of the key. It never touches the disk.
func (a *Allocator) Get(containerID, ifName string) (Allocation, bool) {
	key, err := keyOf(containerID, ifName)
	if err != nil {
		return Allocation{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.allocs[key]
	return al.clone(), ok
}

// List returns every committed allocation, including those with addresses
// outside the current ranges, sorted by ContainerID then IfName. It never
// touches the disk.
func (a *Allocator) List() []Allocation {
	a.mu.Lock()
	out := make([]Allocation, 0, len(a.allocs))
	for _, al := range a.allocs {
		out = append(out, al.clone())
	}
	a.mu.Unlock()
	slices.SortFunc(out, func(x, y Allocation) int {
		return cmp.Or(cmp.Compare(x.ContainerID, y.ContainerID), cmp.Compare(x.IfName, y.IfName))
	})
	return out
}

// Gateways returns, per range, its first host address with the range's
// prefix length (10.244.1.1/24, fd00::1/64).
func (a *Allocator) Gateways() []netip.Prefix {
	gws := make([]netip.Prefix, len(a.pools))
	for i, p := range a.pools {
		gws[i] = p.gateway()
	}
	return gws
}

// Ranges returns the configured ranges.
func (a *Allocator) Ranges() []netip.Prefix {
	return slices.Clone(a.ranges)
}

// Close waits for commits in flight and closes the database. Later calls to
// Allocate and Release fail; Get and List keep answering from memory.
func (a *Allocator) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.commits.Wait()
	if err := a.db.Close(); err != nil {
		return fmt.Errorf("close ipam db: %w", err)
	}
	return nil
}

// commit runs fn in a durable write transaction. Under load, Batch folds
// concurrent calls into one transaction and so one fsync. Batch first waits
// up to MaxBatchDelay for company, though; when no other commit is in flight
// there is none to wait for, and a lone CNI ADD commits at once.
func (a *Allocator) commit(solo bool, fn func(*bolt.Tx) error) error {
	if solo {
		return a.db.Update(fn)
	}
	return a.db.Batch(fn)
}

// reserveLocked picks one address per family and holds it for key. It picks
// nothing unless every family has room, so a failure leaves no trace.
func (a *Allocator) reserveLocked(key string) ([]netip.Prefix, []*pool, error) {
	pools := make([]*pool, 0, len(a.groups))
	for _, g := range a.groups {
		i := slices.IndexFunc(g, func(p *pool) bool { return p.free() > 0 })
		if i < 0 {
			errs := make([]error, len(g))
			for j, p := range g {
				errs[j] = &ExhaustedError{Range: p.prefix}
			}
			if len(errs) == 1 {
				return nil, nil, errs[0]
			}
			return nil, nil, errors.Join(errs...)
		}
		pools = append(pools, g[i])
	}
	ips := make([]netip.Prefix, len(pools))
	for i, p := range pools {
		addr := p.next(a.held)
		a.holdLocked(addr, key)
		ips[i] = netip.PrefixFrom(addr, p.prefix.Bits())
	}
	return ips, pools, nil
}

func (a *Allocator) holdLocked(addr netip.Addr, key string) {
	a.held[addr] = key
	if p := a.poolOf(addr); p != nil {
		p.used++
	}
}

func (a *Allocator) unholdLocked(addr netip.Addr) {
	delete(a.held, addr)
	if p := a.poolOf(addr); p != nil {
		p.used--
	}
}

// poolOf returns the pool that counts addr, or nil for an address outside
// the current ranges (kept from before a podCIDR change) or reserved.
func (a *Allocator) poolOf(addr netip.Addr) *pool {
	for _, p := range a.pools {
		if p.holds(addr) {
			return p
		}
	}
	return nil
}

// waitIdleLocked waits until no commit is in flight for key. It may drop
// and retake a.mu.
func (a *Allocator) waitIdleLocked(key string) error {
	for {
		if a.closed {
			return errClosed
		}
		done, ok := a.busy[key]
		if !ok {
			return nil
		}
		a.mu.Unlock()
		<-done
		a.mu.Lock()
	}
}

// beginLocked marks a commit for key in flight. solo is true when it is the
// only one, see commit.
func (a *Allocator) beginLocked(key string) (done chan struct{}, solo bool) {
	done = make(chan struct{})
	solo = len(a.busy) == 0
	a.busy[key] = done
	a.commits.Add(1)
	return done, solo
}

func (a *Allocator) endLocked(key string, done chan struct{}) {
	delete(a.busy, key)
	close(done)
	a.commits.Done()
}
