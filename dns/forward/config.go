package forward

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Config configures a Forwarder. Zero values mean the defaults below.
type Config struct {
	// Upstreams are the recursive resolvers asked, in order of
	// preference; at least one.
	Upstreams []netip.AddrPort

	// CacheSize bounds the number of cached responses (default 10000,
	// the daemon's dns.cacheSize default).
	CacheSize int
	// CacheBytes bounds the memory the cached responses take (default
	// 32 MiB: ten thousand answers of 3 KiB, far above the usual few
	// hundred bytes, while keeping large TXT or DNSKEY answers from
	// growing the cache without bound).
	CacheBytes int64

	// MaxTTL caps how long a positive answer is cached (default 1 h),
	// MaxNegativeTTL a denial of existence (default 30 min), and MinTTL
	// is the least any cacheable answer is kept (default 5 s): CoreDNS's
	// cache defaults.
	MaxTTL, MaxNegativeTTL, MinTTL time.Duration
	// ServfailTTL is how long a SERVFAIL from upstream is cached when no
	// stale data can stand in (default 5 s, CoreDNS's servfail default):
	// long enough to spare upstreams a retry storm, short enough not to
	// outlast a transient failure.
	ServfailTTL time.Duration

	// An entry asked PrefetchHits times (default 10) with no gap of
	// PrefetchWindow (default 1 min) between the questions is refreshed
	// once its remaining lifetime falls below PrefetchPercent (default 10)
	// of its TTL, or to 1 s: CoreDNS's prefetch semantics, with a default
	// amount that leaves rarely asked names alone.
	PrefetchHits    int
	PrefetchWindow  time.Duration
	PrefetchPercent int

	// MaxStale is how long after expiry an entry may still answer when
	// the upstreams fail (default 1 h, CoreDNS's serve_stale default).
	// Stale answers carry a TTL of 30 s (RFC 8767).
	MaxStale time.Duration
	// StaleAnswerTimeout is how long a query with stale data at hand waits
	// for upstream before it is answered from the stale data (default
	// 1.8 s, RFC 8767's client response timer); the upstream query goes on
	// and refreshes the cache when it succeeds.
	StaleAnswerTimeout time.Duration

	// MaxInFlight bounds the upstream queries in flight (default 1000:
	// 20,000 misses/s at 50 ms upstream latency). Identical queries share
	// one; a query that would exceed the bound is answered from stale data
	// or with SERVFAIL.
	MaxInFlight int
	// UpstreamTimeout bounds one exchange with one upstream (default 2 s,
	// CoreDNS forward's read timeout); QueryTimeout bounds all attempts for
	// one question, failover included (default 4 s, below the 5 s after
	// which glibc and Go stub resolvers give up on a server, so they see
	// our SERVFAIL rather than silence).
	UpstreamTimeout, QueryTimeout time.Duration

	Log *zap.Logger // nil: no logs
	// Registerer receives the metrics; nil keeps them unexported.
	Registerer prometheus.Registerer
	// Now is the clock of TTLs, prefetch, serve-stale and upstream
	// hold-down (default time.Now). Socket timeouts use real time.
	Now func() time.Time
}

// Defaults, with the reasons given at the Config fields.
const (
	defaultCacheSize          = 10000
	defaultCacheBytes         = 32 << 20
	defaultMaxTTL             = time.Hour
	defaultMaxNegativeTTL     = 30 * time.Minute
	defaultMinTTL             = 5 * time.Second
	defaultServfailTTL        = 5 * time.Second
	defaultPrefetchHits       = 10
	defaultPrefetchWindow     = time.Minute
	defaultPrefetchPercent    = 10
	defaultMaxStale           = time.Hour
	defaultStaleAnswerTimeout = 1800 * time.Millisecond
	defaultMaxInFlight        = 1000
	defaultUpstreamTimeout    = 2 * time.Second
	defaultQueryTimeout       = 4 * time.Second
)

// withDefaults returns cfg with zero values replaced by defaults, or an
// error naming the first field that is out of range.
func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Upstreams) == 0 {
		return cfg, errors.New("forward: no upstreams configured")
	}
	for _, u := range cfg.Upstreams {
		if !u.IsValid() || !u.Addr().IsValid() || u.Addr().IsUnspecified() || u.Port() == 0 {
			return cfg, fmt.Errorf("forward: upstream %q is not an address and port to send queries to", u)
		}
	}
	ints := []struct {
		name  string
		v     *int
		def   int
		limit int
	}{
		{"CacheSize", &cfg.CacheSize, defaultCacheSize, 0},
		{"PrefetchHits", &cfg.PrefetchHits, defaultPrefetchHits, 0},
		{"PrefetchPercent", &cfg.PrefetchPercent, defaultPrefetchPercent, 90},
		{"MaxInFlight", &cfg.MaxInFlight, defaultMaxInFlight, 0},
	}
	for _, f := range ints {
		if *f.v < 0 || (f.limit > 0 && *f.v > f.limit) {
			return cfg, fmt.Errorf("forward: %s is %d; it must be positive%s (0 means %d)", f.name, *f.v, maxText(f.limit), f.def)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if cfg.CacheBytes < 0 {
		return cfg, fmt.Errorf("forward: CacheBytes is %d; it must be positive (0 means %d)", cfg.CacheBytes, defaultCacheBytes)
	}
	if cfg.CacheBytes == 0 {
		cfg.CacheBytes = defaultCacheBytes
	}
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"MaxTTL", &cfg.MaxTTL, defaultMaxTTL},
		{"MaxNegativeTTL", &cfg.MaxNegativeTTL, defaultMaxNegativeTTL},
		{"MinTTL", &cfg.MinTTL, defaultMinTTL},
		{"ServfailTTL", &cfg.ServfailTTL, defaultServfailTTL},
		{"PrefetchWindow", &cfg.PrefetchWindow, defaultPrefetchWindow},
		{"MaxStale", &cfg.MaxStale, defaultMaxStale},
		{"StaleAnswerTimeout", &cfg.StaleAnswerTimeout, defaultStaleAnswerTimeout},
		{"UpstreamTimeout", &cfg.UpstreamTimeout, defaultUpstreamTimeout},
		{"QueryTimeout", &cfg.QueryTimeout, defaultQueryTimeout},
	}
	for _, f := range durations {
		if *f.v < 0 {
			return cfg, fmt.Errorf("forward: %s is %s; it must be positive (0 means %s)", f.name, *f.v, f.def)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"MaxTTL", cfg.MaxTTL}, {"MaxNegativeTTL", cfg.MaxNegativeTTL}, {"MinTTL", cfg.MinTTL}, {"ServfailTTL", cfg.ServfailTTL}} {
		if f.v < time.Second || f.v%time.Second != 0 {
			return cfg, fmt.Errorf("forward: %s is %s; DNS TTLs are whole seconds, at least 1 s", f.name, f.v)
		}
	}
	if cfg.MinTTL > cfg.MaxTTL || cfg.MinTTL > cfg.MaxNegativeTTL {
		return cfg, fmt.Errorf("forward: MinTTL %s is above MaxTTL %s or MaxNegativeTTL %s", cfg.MinTTL, cfg.MaxTTL, cfg.MaxNegativeTTL)
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

func maxText(limit int) string {
	if limit == 0 {
		return ""
	}
	return fmt.Sprintf(" and at most %d", limit)
}
