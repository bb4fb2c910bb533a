package forward

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConfigErrors(t *testing.T) {
	up := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no upstreams", Config{}, "no upstreams"},
		{"port 0", Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:0")}}, `upstream "192.0.2.53:0"`},
		{"unspecified", Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}}, `upstream "0.0.0.0:53"`},
		{"negative size", Config{Upstreams: up, CacheSize: -1}, "CacheSize is -1"},
		{"negative bytes", Config{Upstreams: up, CacheBytes: -1}, "CacheBytes is -1"},
		{"percent", Config{Upstreams: up, PrefetchPercent: 95}, "PrefetchPercent is 95; it must be positive and at most 90"},
		{"negative timeout", Config{Upstreams: up, UpstreamTimeout: -time.Second}, "UpstreamTimeout is -1s"},
		{"fractional TTL", Config{Upstreams: up, MaxTTL: 1500 * time.Millisecond}, "MaxTTL is 1.5s; DNS TTLs are whole seconds"},
		{"min above max", Config{Upstreams: up, MinTTL: time.Hour, MaxTTL: time.Minute}, "MinTTL 1h0m0s is above MaxTTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	got := []any{cfg.CacheSize, cfg.CacheBytes, cfg.MaxTTL, cfg.MaxNegativeTTL, cfg.MinTTL, cfg.ServfailTTL,
		cfg.PrefetchHits, cfg.PrefetchWindow, cfg.PrefetchPercent, cfg.MaxStale, cfg.StaleAnswerTimeout,
		cfg.MaxInFlight, cfg.UpstreamTimeout, cfg.QueryTimeout}
	want := []any{10000, int64(32 << 20), time.Hour, 30 * time.Minute, 5 * time.Second, 5 * time.Second,
		10, time.Minute, 10, time.Hour, 1800 * time.Millisecond,
		1000, 2 * time.Second, 4 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("defaults = %v, want %v", got, want)
	}
}
