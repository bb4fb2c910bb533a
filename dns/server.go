package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/wire"
	"github.com/nodenet/nodenet/dns/zone"
)

// Forwarder answers names outside the cluster domain (package forward).
type Forwarder interface {
	// Resolve answers req; it never returns nil.
	Resolve(ctx context.Context, req *mdns.Msg) *mdns.Msg
	// AppendCached appends a cached response for k with the given ID to dst, if one is fresh and
	// fits in maxSize bytes.
	AppendCached(dst []byte, k wire.Key, id uint16, maxSize int) ([]byte, bool)
}

// Config is what a Server needs. The sockets are opened (or taken over from a previous process)
// by the caller; the Server reads and answers, and never closes them.
type Config struct {
	Zone      *zone.Zone
	Forwarder Forwarder
	UDP       []*net.UDPConn
	TCP       []*net.TCPListener
	// Ready is closed once the zone holds the whole cluster. The server reads no query before
	// that, or before HoldLimit has passed: queries that arrive while a restarted daemon fills
	// its caches wait in the socket buffers and get real answers instead of SERVFAIL.
	Ready     <-chan struct{}
	HoldLimit time.Duration
	// MaxUpstreamQueries bounds the queries waiting for an upstream at once; beyond it the
	// server answers SERVFAIL at once rather than grow without bound under a query storm.
	MaxUpstreamQueries int
	// MaxTCPConns bounds open TCP connections; TCPIdle closes idle ones.
	MaxTCPConns int
	TCPIdle     time.Duration
	Registerer  prometheus.Registerer
	Log         *zap.Logger
}

const (
	defaultHoldLimit          = 3 * time.Second
	defaultMaxUpstreamQueries = 2048
	defaultMaxTCPConns        = 512
	defaultTCPIdle            = 10 * time.Second
	// maxUDPResponse is the largest UDP response sent to an EDNS0 client whatever buffer it
	// offers, the size the DNS flag day 2020 agreed on to stay clear of IP fragmentation.
	maxUDPResponse = 1232
	// chaseLimit bounds a chain of ExternalName aliases.
	chaseLimit = 8
)

// Server answers DNS queries on the sockets of its Config.
type Server struct {
	cfg      Config
	log      *zap.Logger
	metrics  *metrics
	answers  *answerCache
	upstream chan struct{} // a token per query waiting for an upstream; buffer MaxUpstreamQueries
	tcpConns chan struct{} // a token per open TCP connection; buffer MaxTCPConns
}

// New checks the Config and registers the metrics.
func New(cfg Config) (*Server, error) {
	if cfg.Zone == nil || cfg.Forwarder == nil {
		return nil, errors.New("dns server: a zone and a forwarder are required")
	}
	if len(cfg.UDP) == 0 {
		return nil, errors.New("dns server: no UDP socket to serve")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.HoldLimit == 0 {
		cfg.HoldLimit = defaultHoldLimit
	}
	if cfg.MaxUpstreamQueries <= 0 {
		cfg.MaxUpstreamQueries = defaultMaxUpstreamQueries
	}
	if cfg.MaxTCPConns <= 0 {
		cfg.MaxTCPConns = defaultMaxTCPConns
	}
	if cfg.TCPIdle <= 0 {
		cfg.TCPIdle = defaultTCPIdle
	}
	m := newMetrics()
	if cfg.Registerer != nil {
		if err := m.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("dns server metrics: %w", err)
		}
	}
	return &Server{
		cfg:      cfg,
		log:      cfg.Log.Named("dns"),
		metrics:  m,
		answers:  newAnswerCache(),
		upstream: make(chan struct{}, cfg.MaxUpstreamQueries),
		tcpConns: make(chan struct{}, cfg.MaxTCPConns),
	}, nil
}

// Run serves until ctx ends, then waits for the queries in progress. The sockets stay open: they
// belong to the caller, and possibly to a keeper that hands them to the next process.
func (s *Server) Run(ctx context.Context) error {
	s.hold(ctx)
	if ctx.Err() != nil {
		return nil
	}
	var wg sync.WaitGroup
	for _, c := range s.cfg.UDP {
		wg.Go(func() { s.serveUDP(ctx, c, &wg) })
	}
	for _, l := range s.cfg.TCP {
		wg.Go(func() { s.serveTCP(ctx, l, &wg) })
	}
	s.log.Info("serving DNS", zap.Int("udpSockets", len(s.cfg.UDP)), zap.Int("tcpListeners", len(s.cfg.TCP)))
	<-ctx.Done()
	// Blocked reads and accepts return once their deadline is in the past; the sockets stay
	// open, with what is queued in them, for the next reader.
	for _, c := range s.cfg.UDP {
		_ = c.SetReadDeadline(time.Unix(1, 0)) // fails only on a closed socket, which reads no more anyway
	}
	for _, l := range s.cfg.TCP {
		_ = l.SetDeadline(time.Unix(1, 0)) // likewise
	}
	wg.Wait()
	return nil
}

// hold waits for the zone to be ready, or the hold limit.
func (s *Server) hold(ctx context.Context) {
	if s.cfg.Ready == nil {
		return
	}
	t := time.NewTimer(s.cfg.HoldLimit)
	defer t.Stop()
	select {
	case <-s.cfg.Ready:
	case <-t.C:
		s.log.Warn("cluster state not synced yet; answering anyway (cluster names get SERVFAIL until it is)", zap.Duration("waited", s.cfg.HoldLimit))
	case <-ctx.Done():
	}
}
