package forward

import (
	"context"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/wire"
)

// A call is one upstream query, shared by every client query for its key
// that arrives while it is in flight.
type call struct {
	// done is closed by runCall once ans is set; nobody sends on it.
	done chan struct{}
	// ans is the answer for the waiting clients: the upstream's, or a
	// fresh cached entry when the upstreams failed; nil when they failed
	// and there is none, so that each client falls back to its stale data.
	ans *answer
}

// An answer is a sanitized upstream response, without OPT record, or a
// cache entry, or both.
type answer struct {
	msg *dns.Msg
	ent *entry // nil when msg was not cacheable
}

// replyFrom makes the answer to req from an upstream's. Clients waiting on
// one call each get their own message.
func (f *Forwarder) replyFrom(req *dns.Msg, k wire.Key, a *answer) *dns.Msg {
	if a.ent == nil {
		return finishReply(req, k, a.msg.Copy())
	}
	var ttl uint32
	if age := f.clock.read() - a.ent.stored; a.ent.fresh(age) {
		ttl = a.ent.remaining(age)
	}
	return f.reply(req, k, a.ent.appendTo(nil, 0, ttl))
}

// startCall returns the upstream query in flight for k, joined reports
// whether it was already running. It returns nil once MaxInFlight queries
// are in flight or Run has stopped: the caller answers without upstream.
// The number of calls is what bounds the Forwarder's memory under a query
// storm: waiting clients hold only a pointer to their call.
func (f *Forwarder) startCall(k wire.Key) (c *call, joined bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.calls[k]; c != nil {
		return c, true
	}
	if f.stopped {
		return nil, false
	}
	if len(f.calls) >= f.cfg.MaxInFlight {
		f.m.rejected.Inc()
		return nil, false
	}
	c = &call{done: make(chan struct{})}
	f.calls[k] = c
	f.m.inFlight.Inc()
	f.wg.Add(1)
	go f.runCall(k, c)
	return c, false
}

// runCall asks the upstreams, caches what they answer and hands it to the
// waiting clients. The cache is updated before the call leaves the map,
// so a query arriving in between finds one or the other.
func (f *Forwarder) runCall(k wire.Key, c *call) {
	defer f.wg.Done()
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.QueryTimeout)
	defer cancel()
	resp, err := f.ups.resolve(ctx, k)
	c.ans = f.settle(k, resp, err, f.clock.read())
	f.mu.Lock()
	delete(f.calls, k)
	f.mu.Unlock()
	f.m.inFlight.Dec()
	close(c.done)
}

// settle caches an upstream result and returns the answer for the waiting
// clients. A failure (no answer, SERVFAIL, REFUSED) leaves usable cached
// data in place and returns nil, so that the clients get that data.
func (f *Forwarder) settle(k wire.Key, resp *dns.Msg, err error, now time.Duration) *answer {
	if err != nil {
		f.log.Debug("no upstream answered", zap.String("name", k.Name), zap.Uint16("type", k.Type), zap.Error(err))
		return standIn(f.noteFailure(k, now), now)
	}
	if dropped := sanitize(resp, k); dropped > 0 {
		f.log.Debug("dropped records outside the question's chain or zone", zap.String("name", k.Name), zap.Int("records", dropped))
	}
	if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
		if e := f.noteFailure(k, now); e != nil {
			return standIn(e, now)
		}
	}
	ent, ok, err := newEntry(resp, k, now, &f.cfg)
	if err != nil {
		f.log.Warn("upstream answer not cacheable", zap.Error(err))
	}
	if !ok {
		return &answer{msg: resp}
	}
	f.cache.put(ent, now)
	return &answer{msg: resp, ent: ent}
}

// standIn is the answer a cached entry gives when the upstreams failed: a
// fresh one answers as it is; a stale one, or none, leaves each waiting
// client to its own stale data or SERVFAIL.
func standIn(e *entry, now time.Duration) *answer {
	if e == nil || !e.fresh(now-e.stored) {
		return nil
	}
	return &answer{ent: e}
}
