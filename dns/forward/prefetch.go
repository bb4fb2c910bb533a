package forward

import (
	"time"

	"github.com/nodenet/nodenet/dns/wire"
)

// usedResolution is how precisely an entry's last use is kept: writing it
// on every hit would make cores that answer the same popular name fight
// over its cache line.
const usedResolution = int64(time.Second)

// notePopular records that e answered a question at age and, once e is
// popular and near its end, refreshes it from upstream so that its clients
// never see a miss. Popular means PrefetchHits questions with no gap of
// PrefetchWindow between them (CoreDNS's prefetch); near its end means
// past prefetchAfter. In steady state a hit only reads the atomics.
func (f *Forwarder) notePopular(k wire.Key, e *entry, now, age time.Duration) {
	t := int64(now)
	gap := t - e.lastUsed.Load()
	if gap >= usedResolution {
		e.lastUsed.Store(t)
	}
	hits := int32(f.cfg.PrefetchHits)
	switch {
	case gap >= int64(f.cfg.PrefetchWindow):
		e.streak.Store(1)
	case e.streak.Load() < hits:
		e.streak.Add(1)
	}
	if age < e.prefetchAfter || e.streak.Load() < hits || e.prefetched.Load() || !e.prefetched.CompareAndSwap(false, true) {
		return
	}
	if c, joined := f.startCall(k); c == nil {
		e.prefetched.Store(false) // in-flight limit reached: a later hit tries again
	} else if !joined {
		f.m.prefetches.Inc()
	}
}
