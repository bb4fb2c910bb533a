// Package healthcheck serves the health check node ports of Services with
// externalTrafficPolicy: Local, answering as kube-proxy does. A cloud load
// balancer probes spec.healthCheckNodePort on every node and sends traffic
// only to nodes that answer 200, that is nodes with a ready local endpoint,
// because such Services are never forwarded to another node.
//
// The daemon wires a Server beside package proxy: after each proxy sync it
// passes the wanted ports to SyncServices and the local endpoint counts to
// SyncEndpoints. Package proxy does not import this one.
package healthcheck

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/proxy"
)

// readHeaderTimeout bounds how long a connection may hold a goroutine before
// sending its request: the ports are open to the whole network, and a load
// balancer's probe sends its request at once.
const readHeaderTimeout = 10 * time.Second

// Server opens one HTTP listener per Service (and node address) on the
// Service's health check node port. Its methods are safe for concurrent use.
type Server struct {
	log    *zap.Logger
	hosts  []string // listen hosts; "" = every address of the node
	listen func(network, address string) (net.Listener, error)
	reg    prometheus.Registerer
	m      *metrics

	// healthy is the proxy's own health: a node whose rules are stale must
	// not attract traffic even where it has endpoints.
	healthy atomic.Bool

	mu        sync.Mutex // serialises the Sync calls and Close
	closed    bool
	services  map[proxy.ServiceKey]*instance
	endpoints map[proxy.ServiceKey]int // the last SyncEndpoints, for ports opened later
}

// Option changes a default of New.
type Option func(*Server)

// WithListen replaces net.Listen, which opens the listeners; tests use it to
// listen inside a network namespace.
func WithListen(listen func(network, address string) (net.Listener, error)) Option {
	return func(s *Server) { s.listen = listen }
}

// WithRegisterer registers the Server's metrics on reg; without it they are
// kept but not exported.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(s *Server) { s.reg = reg }
}

// New returns a Server that will listen on addrs, the node addresses that
// accept NodePort traffic; empty means every address, as kube-proxy does
// without --nodeport-addresses. It opens nothing until SyncServices. The
// proxy counts as healthy until SetProxyHealthy says otherwise, as kube-proxy
// is before its first sync.
func New(log *zap.Logger, addrs []netip.Addr, opts ...Option) *Server {
	s := &Server{
		log:       log.Named("healthcheck"),
		hosts:     listenHosts(addrs),
		listen:    net.Listen,
		m:         newMetrics(),
		services:  map[proxy.ServiceKey]*instance{},
		endpoints: map[proxy.ServiceKey]int{},
	}
	s.healthy.Store(true)
	for _, o := range opts {
		o(s)
	}
	if s.reg != nil {
		s.m.register(s.reg)
	}
	return s
}

// listenHosts turns node addresses into listen hosts. Duplicates would make
// every bind of a Service fail on its second copy, and the unspecified
// address already covers all others, so both are folded.
func listenHosts(addrs []netip.Addr) []string {
	var hosts []string
	for _, a := range addrs {
		if a.IsUnspecified() {
			return []string{""}
		}
		hosts = append(hosts, a.Unmap().String())
	}
	if len(hosts) == 0 {
		return []string{""}
	}
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

// SetProxyHealthy sets the health reported in every answer. While it is
// false every Service answers 503, as kube-proxy does when its own /healthz
// fails, so load balancers move traffic off the node.
func (s *Server) SetProxyHealthy(healthy bool) {
	s.healthy.Store(healthy)
}

// SyncServices makes the open health check ports match want, the health
// check node port of each Service. Ports of Services no longer wanted, or
// whose port changed, are closed; new ones are opened. A port that cannot be
// opened (already in use, say) is logged and counted, leaves the other
// Services alone, and is tried again at the next call. Ports outside
// 1-65535 are logged and skipped.
func (s *Server) SyncServices(want map[proxy.ServiceKey]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	// Close before opening: a port can move from one Service to another in
	// a single sync, and the new listener needs it free.
	for key, inst := range s.services {
		port, ok := want[key]
		if ok && port == inst.port && !inst.broken.Load() {
			continue
		}
		s.log.Info("close health check port", zap.Stringer("service", key), zap.Int32("port", inst.port))
		inst.close(s.log)
		delete(s.services, key)
	}
	for key, port := range want {
		if _, ok := s.services[key]; ok {
			continue
		}
		if port < 1 || port > 65535 {
			s.log.Error("invalid health check port", zap.Stringer("service", key), zap.Int32("port", port))
			continue
		}
		inst, err := s.open(key, port)
		if err != nil {
			s.m.listenFailures.Inc()
			s.log.Error("open health check port", zap.Stringer("service", key), zap.Int32("port", port), zap.Error(err))
			continue
		}
		s.log.Info("open health check port", zap.Stringer("service", key), zap.Int32("port", port))
		s.services[key] = inst
	}
	s.m.services.Set(float64(len(s.services)))
}

// SyncEndpoints sets the number of ready local endpoints of each Service;
// a Service missing from counts has none.
func (s *Server) SyncEndpoints(counts map[proxy.ServiceKey]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endpoints = maps.Clone(counts)
	for key, inst := range s.services {
		inst.endpoints.Store(int64(counts[key]))
	}
}

// Close closes every port and waits until nothing serves any more. Later
// Sync calls do nothing.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for key, inst := range s.services {
		inst.close(s.log)
		delete(s.services, key)
	}
	s.m.services.Set(0)
}

// instance is one Service's open health check port, on every listen host.
type instance struct {
	key       proxy.ServiceKey
	port      int32
	servers   []*http.Server
	serving   sync.WaitGroup // one Serve goroutine per server
	endpoints atomic.Int64   // read by every request, written by SyncEndpoints
	// broken is set when a Serve stops on its own (an accept error): the
	// port no longer answers, so the next SyncServices reopens it.
	broken atomic.Bool
}

// open listens on port on every host and serves there. When one host fails
// it closes those already open, so a retry or another Service can bind them.
func (s *Server) open(key proxy.ServiceKey, port int32) (*instance, error) {
	inst := &instance{key: key, port: port}
	inst.endpoints.Store(int64(s.endpoints[key]))
	handler := s.handler(inst)
	errorLog := zap.NewStdLog(s.log.With(zap.Stringer("service", key)))
	for _, host := range s.hosts {
		addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
		ln, err := s.listen("tcp", addr)
		if err != nil {
			inst.close(s.log)
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: readHeaderTimeout, ErrorLog: errorLog}
		inst.servers = append(inst.servers, srv)
		inst.serving.Go(func() {
			err := srv.Serve(ln)
			if !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("health check port stopped serving", zap.Stringer("service", key), zap.String("address", addr), zap.Error(err))
				inst.broken.Store(true)
			}
		})
	}
	return inst, nil
}

// close stops the servers and waits for their Serve goroutines. The wait is
// what frees the port before close returns: a Serve that had not started
// when its server was closed closes the listener only on its way out.
func (inst *instance) close(log *zap.Logger) {
	for _, srv := range inst.servers {
		if err := srv.Close(); err != nil {
			log.Warn("close health check server", zap.Stringer("service", inst.key), zap.Int32("port", inst.port), zap.Error(err))
		}
	}
	inst.serving.Wait()
}
