package forward

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/wire"
)

// advertisedUDPSize is the EDNS0 UDP payload size sent upstream and to
// clients: the DNS Flag Day 2020 value, which avoids IP fragmentation on
// any usual path.
const advertisedUDPSize = 1232

// sweepInterval is how often entries past their stale window are dropped.
const sweepInterval = time.Minute

// Forwarder answers queries from its cache and its upstreams. Its methods
// are safe for concurrent use.
type Forwarder struct {
	cfg   Config
	clock *clock
	log   *zap.Logger
	m     *metrics
	cache *cache
	ups   *upstreams

	// ctx bounds every upstream query; it ends when Run stops.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards calls and stopped.
	mu sync.Mutex
	// calls are the upstream queries in flight, one per key, each run by
	// a goroutine counted in wg.
	calls   map[wire.Key]*call
	stopped bool
	wg      sync.WaitGroup
}

// New checks cfg and builds a Forwarder. It registers the metrics on
// cfg.Registerer.
func New(cfg Config) (*Forwarder, error) {
	systemClock := cfg.Now == nil
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	if cfg.Registerer != nil {
		if err := m.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("register DNS forwarder metrics: %w", err)
		}
	}
	log := cfg.Log.Named("forward")
	ctx, cancel := context.WithCancel(context.Background())
	return &Forwarder{
		cfg:    cfg,
		clock:  newClock(cfg.Now, systemClock),
		log:    log,
		m:      m,
		cache:  newCache(cfg.CacheSize, cfg.CacheBytes, m),
		ups:    newUpstreams(&cfg, m, log),
		ctx:    ctx,
		cancel: cancel,
		calls:  map[wire.Key]*call{},
	}, nil
}

// Run keeps the clock of cache hits and drops expired entries until ctx
// ends, then cancels the upstream queries in flight (prefetches and
// refreshes included) and returns once they have ended. Resolve answers
// SERVFAIL or stale data afterwards.
func (f *Forwarder) Run(ctx context.Context) error {
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	var tick <-chan time.Time
	if f.clock.coarse {
		t := time.NewTicker(coarseTick)
		defer t.Stop()
		tick = t.C
		f.clock.tick()
		defer f.clock.stopTicking()
	}
	for {
		select {
		case <-ctx.Done():
			f.mu.Lock()
			f.stopped = true
			f.mu.Unlock()
			f.cancel()
			f.wg.Wait()
			return nil
		case <-tick:
			f.clock.tick()
		case <-sweep.C:
			f.cache.sweep(f.clock.read(), f.cfg.MaxStale)
		}
	}
}

// Resolve answers req, a query for a name outside the cluster domain: from
// the cache, else from upstream, else from stale data, else SERVFAIL. It
// never returns nil. The answer is not truncated: that is the server's job,
// which knows the client's transport and buffer size.
func (f *Forwarder) Resolve(ctx context.Context, req *dns.Msg) *dns.Msg {
	k, refused := requestKey(req)
	if refused != nil {
		return refused
	}
	now := f.clock.fast()
	e := f.cache.get(k)
	if e != nil {
		age := now - e.stored
		if e.fresh(age) {
			f.m.hits[e.kind].Inc()
			f.notePopular(k, e, now, age)
			return f.reply(req, k, e.appendTo(nil, 0, e.remaining(age)))
		}
		if age >= e.lifetime+staleWindow(e, f.cfg.MaxStale) {
			e = nil
		}
	}
	f.m.misses.Inc()
	if e != nil && f.failedRecently(k, e, now) {
		return f.answerStale(req, k, e)
	}
	c, joined := f.startCall(k)
	if joined {
		f.m.coalesced.Inc()
	}
	if c == nil {
		return f.answerStaleOrFail(req, k, e)
	}
	var staleTimer <-chan time.Time
	if e != nil {
		t := time.NewTimer(f.cfg.StaleAnswerTimeout)
		defer t.Stop()
		staleTimer = t.C
	}
	select {
	case <-c.done:
	case <-staleTimer:
		return f.answerStale(req, k, e)
	case <-ctx.Done():
		return f.answerStaleOrFail(req, k, e)
	}
	if c.ans == nil {
		return f.answerStaleOrFail(req, k, e)
	}
	return f.replyFrom(req, k, c.ans)
}

// requestKey returns the cache key of req, or the answer to a request this
// package does not forward.
func requestKey(req *dns.Msg) (wire.Key, *dns.Msg) {
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return wire.Key{}, errorReply(req, dns.RcodeNotImplemented)
	case len(req.Question) != 1:
		return wire.Key{}, errorReply(req, dns.RcodeFormatError)
	}
	q := req.Question[0]
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		// Zone transfers stream many messages over TCP; a caching forwarder
		// for pods has no business relaying them.
		return wire.Key{}, errorReply(req, dns.RcodeRefused)
	}
	opt := req.IsEdns0()
	return wire.Key{
		Name:  dns.CanonicalName(q.Name),
		Type:  q.Qtype,
		Class: q.Qclass,
		DO:    opt != nil && opt.Do(),
		CD:    req.CheckingDisabled,
	}, nil
}

// reply turns a cached response in wire form into the answer to req.
func (f *Forwarder) reply(req *dns.Msg, k wire.Key, b []byte) *dns.Msg {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		// newEntry packed these bytes from a message that had unpacked.
		f.log.Error("cached response does not unpack", zap.String("name", k.Name), zap.Error(err))
		return errorReply(req, dns.RcodeServerFailure)
	}
	return finishReply(req, k, m)
}

// finishReply makes m the answer to req: its ID, flags and question (in
// the client's spelling), and an OPT record when req had one.
func finishReply(req *dns.Msg, k wire.Key, m *dns.Msg) *dns.Msg {
	m.Id = req.Id
	m.Response = true
	m.Opcode = req.Opcode
	m.RecursionDesired = req.RecursionDesired
	m.CheckingDisabled = req.CheckingDisabled
	m.Question = []dns.Question{req.Question[0]}
	if req.IsEdns0() != nil {
		m.SetEdns0(advertisedUDPSize, k.DO)
	}
	return m
}

func errorReply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(advertisedUDPSize, opt.Do())
	}
	return m
}
