package forward

import (
	"sync/atomic"
	"time"
)

// coarseTick is how often Run refreshes the clock the fast path reads; TTLs
// count in seconds, so hits may see a time this much behind.
const coarseTick = 10 * time.Millisecond

// clock is the Forwarder's time: a duration since just before New, so that
// readings fit an atomic and zero can mean "never". Reading the system
// clock costs more than the rest of a cache hit on some virtual machines
// (about 90 ns on the test machines, where the rest takes some 70), so with
// the system clock, while Run runs, hits read a copy that Run refreshes
// every coarseTick. An injected clock is
// always read directly: tests move it and expect to be seen at once.
type clock struct {
	now    func() time.Time
	epoch  time.Time
	coarse bool // hits may read the copy

	copy    atomic.Int64 // a reading at most coarseTick old while ticking
	ticking atomic.Bool
}

func newClock(now func() time.Time, coarse bool) *clock {
	return &clock{now: now, epoch: now().Add(-time.Second), coarse: coarse}
}

// read is the time now.
func (c *clock) read() time.Duration { return c.now().Sub(c.epoch) }

// fast is the time now, or up to coarseTick before it.
func (c *clock) fast() time.Duration {
	if c.ticking.Load() {
		return time.Duration(c.copy.Load())
	}
	return c.read()
}

// tick refreshes the copy; only Run calls it.
func (c *clock) tick() {
	c.copy.Store(int64(c.read()))
	c.ticking.Store(true)
}

// stopTicking sends fast back to the system clock once Run ends.
func (c *clock) stopTicking() { c.ticking.Store(false) }
