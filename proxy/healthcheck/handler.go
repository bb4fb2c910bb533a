package healthcheck

import (
	"encoding/json"
	"net/http"
	"strconv"

	"go.uber.org/zap"
)

// answer is the body kube-proxy sends; load balancers and people debugging
// them read it, so the field names and layout are kept.
type answer struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// handler answers every request to inst's port, whatever its method and
// path, as kube-proxy does: probes are configured with arbitrary paths.
func (s *Server) handler(inst *instance) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a answer
		a.Service.Namespace, a.Service.Name = inst.key.Namespace, inst.key.Name
		a.LocalEndpoints = int(inst.endpoints.Load())
		a.ServiceProxyHealthy = s.healthy.Load()
		// Tab-indented without a final newline is byte for byte what
		// kube-proxy writes. Marshalling two strings, an int and a bool
		// cannot fail.
		body, _ := json.MarshalIndent(a, "", "\t")

		code := http.StatusServiceUnavailable
		if a.LocalEndpoints > 0 && a.ServiceProxyHealthy {
			code = http.StatusOK
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		// Load balancers that weigh nodes (GCE's WEIGHTED_MAGLEV) read the
		// local endpoint count here.
		h.Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(a.LocalEndpoints))
		w.WriteHeader(code)
		if _, err := w.Write(body); err != nil {
			s.log.Debug("write health check answer", zap.Stringer("service", inst.key), zap.Error(err))
		}
		s.m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
		s.log.Debug("health check", zap.Stringer("service", inst.key), zap.String("client", r.RemoteAddr), zap.Int("code", code), zap.Int("localEndpoints", a.LocalEndpoints))
	})
}
