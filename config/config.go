// Package config loads, defaults and validates the nodenet daemon's configuration file
// (apiVersion nodenet.dev/v1alpha1, kind NodenetConfig).
package config

import "net/netip"

// APIVersion and Kind identify the configuration file format.
const (
	APIVersion = "nodenet.dev/v1alpha1"
	Kind       = "NodenetConfig"
)

// KubeconfigNone runs the daemon without an API server: pod networking only.
const KubeconfigNone = "none"

// Config is the whole daemon configuration. Field names follow Kubernetes component-config
// style (camelCase); every key is validated by Validate.
type Config struct {
	APIVersion    string         `json:"apiVersion"`
	Kind          string         `json:"kind"`
	NodeName      string         `json:"nodeName"`
	Kubeconfig    string         `json:"kubeconfig"`
	APIServer     APIServer      `json:"apiServer"`
	ClusterCIDRs  []netip.Prefix `json:"clusterCIDRs"`
	ServiceCIDRs  []netip.Prefix `json:"serviceCIDRs"`
	PodCIDRs      []netip.Prefix `json:"podCIDRs"`
	ClusterDomain string         `json:"clusterDomain"`
	StateDir      string         `json:"stateDir"`
	RunDir        string         `json:"runDir"`
	CNI           CNI            `json:"cni"`
	Routing       Routing        `json:"routing"`
	Proxy         Proxy          `json:"proxy"`
	DNS           DNS            `json:"dns"`
	Metrics       Endpoint       `json:"metrics"`
	Health        Endpoint       `json:"health"`
	Logging       Logging        `json:"logging"`
}

// APIServer says how the daemon reaches the API server when it runs in the cluster (kubeconfig
// ""). Without kube-proxy the kubernetes Service's ClusterIP answers only once nodenet itself has
// programmed it, so a node's first daemon must reach the API server directly.
type APIServer struct {
	// URL of the API server, e.g. https://192.0.2.10:6443. Empty takes the server of the first
	// of KubeletKubeconfigs that names one, else the kubernetes Service (KUBERNETES_SERVICE_HOST).
	URL string `json:"url"`
	// KubeletKubeconfigs are the node kubelet's kubeconfig files as the daemon sees them; only
	// their server address is read (the daemon authenticates with its own service account).
	KubeletKubeconfigs []string `json:"kubeletKubeconfigs"`
}

// CNI configures the pod network plumbing and the files handed to the container runtime.
type CNI struct {
	BinDir  string `json:"binDir"`
	ConfDir string `json:"confDir"`
	Bridge  string `json:"bridge"`
	// MTU of pod interfaces; 0 takes the uplink's MTU.
	MTU int `json:"mtu"`
}

// Routing configures how pods on different nodes reach each other.
type Routing struct {
	Mode string `json:"mode"`
}

// Routing modes.
const (
	RoutingAuto   = "auto"
	RoutingDirect = "direct"
	RoutingVXLAN  = "vxlan"
)

// Proxy configures Service load balancing.
type Proxy struct {
	Enabled           *bool          `json:"enabled"`
	NodePortAddresses []netip.Prefix `json:"nodePortAddresses"`
	MasqueradeAll     bool           `json:"masqueradeAll"`
	// HealthzAddress serves kube-proxy's /healthz and /livez, which cloud load balancers probe
	// (kube-proxy's healthzBindAddress); "none" serves nothing.
	HealthzAddress string `json:"healthzAddress"`
}

// NoHealthz is the proxy.healthzAddress that serves nothing.
const NoHealthz = "none"

// DNS configures the node-local DNS server.
type DNS struct {
	Enabled   *bool        `json:"enabled"`
	Listen    []netip.Addr `json:"listen"`
	Upstreams []string     `json:"upstreams"`
	CacheSize int          `json:"cacheSize"`
	// TTL is the time to live, in seconds, of the cluster domain's records; nil means 5 s, as
	// CoreDNS's kubernetes plugin, and 0 asks clients not to cache them at all.
	TTL *int `json:"ttl"`
	// ResolvConf is where the node's upstream servers are read from when Upstreams is empty.
	ResolvConf string `json:"resolvConf"`
}

// Endpoint is a listen address of an HTTP server.
type Endpoint struct {
	Address string `json:"address"`
}

// Logging configures zap.
type Logging struct {
	Level  string `json:"level"`
	Format string `json:"format"`
}

// ProxyEnabled reports whether Service load balancing runs.
func (c *Config) ProxyEnabled() bool { return c.Proxy.Enabled == nil || *c.Proxy.Enabled }

// DNSUpstreams returns dns.upstreams as addresses with ports (53 when none is given). Validate
// has checked them.
func (c *Config) DNSUpstreams() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(c.DNS.Upstreams))
	for _, u := range c.DNS.Upstreams {
		if a, err := upstreamAddr(u); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// DNSEnabled reports whether the node-local DNS server runs.
func (c *Config) DNSEnabled() bool { return c.DNS.Enabled == nil || *c.DNS.Enabled }

// Standalone reports whether the daemon runs without an API server.
func (c *Config) Standalone() bool { return c.Kubeconfig == KubeconfigNone }
