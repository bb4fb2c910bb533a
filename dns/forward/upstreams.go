package forward

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/wire"
)

const (
	// maxFails consecutive failed exchanges put an upstream on hold
	// (CoreDNS forward's max_fails default).
	maxFails = 2
	// holdDown is how long queries skip an upstream on hold; the first
	// query after it probes the upstream again.
	holdDown = 5 * time.Second
)

// upstreams are the resolvers asked, in order of preference, with what is
// known of their health.
type upstreams struct {
	list    []*upstream
	timeout time.Duration
	now     func() time.Time
	log     *zap.Logger
}

type upstream struct {
	addr netip.AddrPort
	m    upstreamMetrics

	mu        sync.Mutex
	fails     int // consecutive
	downUntil time.Time
}

func newUpstreams(cfg *Config, m *metrics, log *zap.Logger) *upstreams {
	us := &upstreams{timeout: cfg.UpstreamTimeout, now: cfg.Now, log: log}
	for _, a := range cfg.Upstreams {
		us.list = append(us.list, &upstream{addr: a, m: m.forUpstream(a.String())})
	}
	return us
}

// resolve asks the upstreams for k until one answers, healthy ones first in
// order of preference. An answer of SERVFAIL, REFUSED or NOTIMP moves on to
// the next upstream, as a stub resolver would, and is returned only when no
// upstream does better.
func (us *upstreams) resolve(ctx context.Context, k wire.Key) (*dns.Msg, error) {
	var (
		last    *dns.Msg
		lastErr error
	)
	for _, u := range us.candidates() {
		if ctx.Err() != nil {
			break
		}
		attempt, cancel := context.WithTimeout(ctx, us.timeout)
		resp, err := u.exchange(attempt, k)
		cancel()
		if err != nil {
			lastErr = err
			u.failed(us.now(), us.log)
			continue
		}
		u.answered(us.log)
		switch resp.Rcode {
		case dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented:
			last = resp
			continue
		}
		return resp, nil
	}
	if last != nil {
		return last, nil
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return nil, errors.Join(errors.New("no upstream answered"), lastErr)
}

// candidates are the upstreams not on hold; all of them when every one is,
// since then the hold itself is more likely wrong than every upstream.
func (us *upstreams) candidates() []*upstream {
	now := us.now()
	out := make([]*upstream, 0, len(us.list))
	for _, u := range us.list {
		if u.available(now) {
			out = append(out, u)
		}
	}
	if len(out) == 0 {
		return us.list
	}
	return out
}

func (u *upstream) available(now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return !now.Before(u.downUntil)
}

func (u *upstream) failed(now time.Time, log *zap.Logger) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.fails++
	if u.fails < maxFails {
		return
	}
	if u.fails == maxFails {
		log.Warn("upstream DNS server fails; skipping it while others answer", zap.Stringer("upstream", u.addr), zap.Duration("for", holdDown))
	}
	u.downUntil = now.Add(holdDown)
}

func (u *upstream) answered(log *zap.Logger) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.fails >= maxFails {
		log.Info("upstream DNS server answers again", zap.Stringer("upstream", u.addr))
	}
	u.fails = 0
	u.downUntil = time.Time{}
}
