package forward

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

func TestSystemClockIsReadCoarselyWhileRunning(t *testing.T) {
	f, err := New(Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}})
	if err != nil {
		t.Fatal(err)
	}
	if !f.clock.coarse || f.clock.ticking.Load() {
		t.Fatalf("before Run: coarse %t, ticking %t; want a coarse clock not yet ticking", f.clock.coarse, f.clock.ticking.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	eventually(t, "Run to tick the clock", f.clock.ticking.Load)
	if lag := f.clock.read() - f.clock.fast(); lag < 0 || lag > time.Second {
		t.Errorf("the coarse clock is %s behind", lag)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if f.clock.ticking.Load() {
		t.Error("after Run the fast path still reads the copy Run no longer refreshes")
	}
}

func TestInjectedClockIsReadDirectly(t *testing.T) {
	f, clock := startForwarder(t, Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}})
	before := f.clock.fast()
	clock.Advance(time.Minute)
	if got := f.clock.fast() - before; got != time.Minute {
		t.Errorf("fast clock moved %s after the test clock moved 1m", got)
	}
}

func TestRemainingTTLOfACoarseReadingBeforeStorage(t *testing.T) {
	e := &entry{ttl: 30, lifetime: 30 * time.Second}
	if got := e.remaining(-2 * time.Second); got != 30 {
		t.Errorf("remaining at age -2s = %d, want 30", got)
	}
}
