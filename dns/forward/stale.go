package forward

import (
	"time"

	"github.com/miekg/dns"

	"github.com/nodenet/nodenet/dns/wire"
)

// Serve-stale timers of RFC 8767.
const (
	// staleTTL is the TTL of a stale answer: clients ask again soon, and
	// by then the upstreams may be back.
	staleTTL = 30
	// staleRecheck is the failure recheck timer: after a refresh of an
	// expired entry failed, its stale data answers at once, and the next
	// refresh goes out in the background no sooner than this.
	staleRecheck = 30 * time.Second
)

// failedRecently says whether a refresh of the expired entry e failed
// since it was stored. If so its stale data answers at once, and when the last failure is
// older than staleRecheck a new refresh starts in the background: the
// upstreams are retried for as long as clients ask.
func (f *Forwarder) failedRecently(k wire.Key, e *entry, now time.Duration) bool {
	last := e.lastFailure.Load()
	if last == 0 {
		return false
	}
	if now-time.Duration(last) >= staleRecheck && e.lastFailure.CompareAndSwap(last, int64(now)) {
		f.startCall(k) // nil when MaxInFlight are in flight: the next client tries again
	}
	return true
}

// noteFailure records that refreshing k failed and returns the cached entry
// that stands in for the failed answer, if any: one that is fresh (a
// failed prefetch), or expired but within its stale window.
func (f *Forwarder) noteFailure(k wire.Key, now time.Duration) *entry {
	e := f.cache.get(k)
	if e == nil || e.kind == kindServfail || now-e.stored >= e.lifetime+f.cfg.MaxStale {
		return nil
	}
	e.lastFailure.Store(int64(now))
	return e
}

// answerStale answers req from the expired entry e.
func (f *Forwarder) answerStale(req *dns.Msg, k wire.Key, e *entry) *dns.Msg {
	f.m.servedStale.Inc()
	return f.reply(req, k, e.appendTo(nil, 0, staleTTL))
}

// answerStaleOrFail answers req from e when there is one, else SERVFAIL.
func (f *Forwarder) answerStaleOrFail(req *dns.Msg, k wire.Key, e *entry) *dns.Msg {
	if e != nil {
		return f.answerStale(req, k, e)
	}
	return errorReply(req, dns.RcodeServerFailure)
}
