package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Default fills every key the file left empty with the value of DESIGN.md's contract.
func (c *Config) Default() error {
	if c.APIVersion == "" {
		c.APIVersion = APIVersion
	}
	if c.Kind == "" {
		c.Kind = Kind
	}
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("config: nodeName is empty, NODE_NAME is unset and the hostname is unknown: %w", err)
		}
		c.NodeName = strings.ToLower(host)
	}
	if c.ClusterCIDRs == nil {
		c.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	}
	if c.ServiceCIDRs == nil {
		c.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
	}
	if c.APIServer.KubeletKubeconfigs == nil {
		// Where deploy/ mounts the host's /etc/kubernetes: kubeadm's kubelet.conf.
		c.APIServer.KubeletKubeconfigs = []string{"/host/etc/kubernetes/kubelet.conf"}
	}
	setString(&c.ClusterDomain, "cluster.local")
	setString(&c.StateDir, "/var/lib/nodenet")
	setString(&c.RunDir, "/run/nodenet")
	setString(&c.CNI.BinDir, "/opt/cni/bin")
	setString(&c.CNI.ConfDir, "/etc/cni/net.d")
	setString(&c.CNI.Bridge, "nodenet0")
	setString(&c.Routing.Mode, RoutingAuto)
	if c.DNS.Listen == nil {
		c.DNS.Listen = []netip.Addr{netip.MustParseAddr("169.254.20.10")}
	}
	if c.DNS.CacheSize == 0 {
		c.DNS.CacheSize = 10000
	}
	if c.DNS.TTL == nil {
		ttl := 5
		c.DNS.TTL = &ttl
	}
	setString(&c.DNS.ResolvConf, "/etc/resolv.conf")
	setString(&c.Metrics.Address, "127.0.0.1:9310")
	setString(&c.Health.Address, ":9311")
	setString(&c.Proxy.HealthzAddress, ":10256")
	setString(&c.Logging.Level, "info")
	setString(&c.Logging.Format, "json")
	return nil
}

func setString(field *string, value string) {
	if *field == "" {
		*field = value
	}
}

// Validate checks every key and returns the first problem as one line naming the key, the value
// and what is allowed.
func (c *Config) Validate() error {
	for _, check := range []func() error{
		c.validateHeader, c.validateCIDRs, c.validatePaths, c.validateAPIServer, c.validateCNI, c.validateModes,
		c.validateDNS, c.validateEndpoints, c.validateStandalone,
	} {
		if err := check(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	return nil
}

func (c *Config) validateHeader() error {
	if c.APIVersion != APIVersion {
		return fmt.Errorf("apiVersion: %q is not allowed (want %s)", c.APIVersion, APIVersion)
	}
	if c.Kind != Kind {
		return fmt.Errorf("kind: %q is not allowed (want %s)", c.Kind, Kind)
	}
	if !isDNSName(c.NodeName) {
		return fmt.Errorf("nodeName: %q is not allowed (want a lower-case DNS name, as Kubernetes Node names are)", c.NodeName)
	}
	if !isDNSName(c.ClusterDomain) {
		return fmt.Errorf("clusterDomain: %q is not allowed (want a DNS name such as cluster.local)", c.ClusterDomain)
	}
	return nil
}

func (c *Config) validateCIDRs() error {
	if len(c.ClusterCIDRs) == 0 {
		return fmt.Errorf("clusterCIDRs: [] is not allowed (want at least one CIDR)")
	}
	lists := []struct {
		key      string
		prefixes []netip.Prefix
	}{{"clusterCIDRs", c.ClusterCIDRs}, {"serviceCIDRs", c.ServiceCIDRs}, {"podCIDRs", c.PodCIDRs}, {"proxy.nodePortAddresses", c.Proxy.NodePortAddresses}}
	for _, l := range lists {
		for i, p := range l.prefixes {
			if p != p.Masked() {
				return fmt.Errorf("%s[%d]: %q is not allowed (want the network address: %s)", l.key, i, p, p.Masked())
			}
		}
	}
	// Pod and service ranges must be disjoint or traffic to one would be routed as the other.
	named := func(key string, ps []netip.Prefix) []namedPrefix {
		out := make([]namedPrefix, len(ps))
		for i, p := range ps {
			out[i] = namedPrefix{fmt.Sprintf("%s[%d]", key, i), p}
		}
		return out
	}
	all := append(named("clusterCIDRs", c.ClusterCIDRs), named("serviceCIDRs", c.ServiceCIDRs)...)
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[i].prefix.Overlaps(all[j].prefix) {
				return fmt.Errorf("%s: %q is not allowed (it overlaps %s %s; ranges must be disjoint)", all[j].key, all[j].prefix, all[i].key, all[i].prefix)
			}
		}
	}
	pods := named("podCIDRs", c.PodCIDRs)
	for i, p := range pods {
		for _, q := range pods[:i] {
			if p.prefix.Overlaps(q.prefix) {
				return fmt.Errorf("%s: %q is not allowed (it overlaps %s %s)", p.key, p.prefix, q.key, q.prefix)
			}
		}
		if !containedIn(p.prefix, c.ClusterCIDRs) {
			return fmt.Errorf("%s: %q is not allowed (want a range inside clusterCIDRs %v, or pod-to-pod traffic would be masqueraded)", p.key, p.prefix, c.ClusterCIDRs)
		}
		if bits := p.prefix.Addr().BitLen() - p.prefix.Bits(); bits < 2 {
			return fmt.Errorf("%s: %q is not allowed (too small for pods: want /30 or larger for IPv4, /126 or larger for IPv6)", p.key, p.prefix)
		}
	}
	return nil
}

type namedPrefix struct {
	key    string
	prefix netip.Prefix
}

func containedIn(p netip.Prefix, outer []netip.Prefix) bool {
	for _, o := range outer {
		if o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func (c *Config) validatePaths() error {
	paths := []struct{ key, value string }{
		{"stateDir", c.StateDir}, {"runDir", c.RunDir}, {"cni.binDir", c.CNI.BinDir}, {"cni.confDir", c.CNI.ConfDir},
		{"dns.resolvConf", c.DNS.ResolvConf},
	}
	if c.Kubeconfig != "" && c.Kubeconfig != KubeconfigNone {
		paths = append(paths, struct{ key, value string }{"kubeconfig", c.Kubeconfig})
	}
	for _, p := range paths {
		if !filepath.IsAbs(p.value) {
			return fmt.Errorf("%s: %q is not allowed (want an absolute path)", p.key, p.value)
		}
		if filepath.Clean(p.value) != p.value {
			return fmt.Errorf("%s: %q is not allowed (want a clean absolute path: %s)", p.key, p.value, filepath.Clean(p.value))
		}
	}
	return nil
}

func (c *Config) validateAPIServer() error {
	if u := c.APIServer.URL; u != "" {
		if c.Kubeconfig != "" {
			return fmt.Errorf("apiServer.url: %q is not allowed with kubeconfig: %s (the kubeconfig names the server)", u, c.Kubeconfig)
		}
		parsed, err := url.Parse(u)
		if err != nil || parsed.Scheme != "https" || parsed.Host == "" || (parsed.Path != "" && parsed.Path != "/") {
			return fmt.Errorf("apiServer.url: %q is not allowed (want https://HOST[:PORT])", u)
		}
	}
	for i, p := range c.APIServer.KubeletKubeconfigs {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("apiServer.kubeletKubeconfigs[%d]: %q is not allowed (want a clean absolute path)", i, p)
		}
	}
	return nil
}

func (c *Config) validateCNI() error {
	if b := c.CNI.Bridge; len(b) > 15 || strings.ContainsAny(b, "/: \t\n") || b == "." || b == ".." {
		return fmt.Errorf("cni.bridge: %q is not allowed (want an interface name of 1 to 15 characters without '/', ':' or spaces)", b)
	}
	minMTU := 576
	for _, p := range append(append([]netip.Prefix{}, c.ClusterCIDRs...), c.PodCIDRs...) {
		if p.Addr().Is6() {
			minMTU = 1280
		}
	}
	if m := c.CNI.MTU; m != 0 && (m < minMTU || m > 65535) {
		return fmt.Errorf("cni.mtu: %d is not allowed (want 0 for the uplink's MTU, or %d..65535)", m, minMTU)
	}
	return nil
}

func (c *Config) validateModes() error {
	switch c.Routing.Mode {
	case RoutingAuto, RoutingDirect, RoutingVXLAN:
	default:
		return fmt.Errorf("routing.mode: %q is not allowed (want auto, direct or vxlan)", c.Routing.Mode)
	}
	switch c.Logging.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("logging.level: %q is not allowed (want debug, info, warn or error)", c.Logging.Level)
	}
	switch c.Logging.Format {
	case "json", "console":
	default:
		return fmt.Errorf("logging.format: %q is not allowed (want json or console)", c.Logging.Format)
	}
	return nil
}

func (c *Config) validateDNS() error {
	for i, a := range c.DNS.Listen {
		if a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("dns.listen[%d]: %q is not allowed (want a unicast address such as 169.254.20.10; never a wildcard: nodenet is not an open resolver)", i, a)
		}
	}
	for i, u := range c.DNS.Upstreams {
		if _, err := upstreamAddr(u); err != nil {
			return fmt.Errorf("dns.upstreams[%d]: %q is not allowed (want IP or IP:port, e.g. 192.0.2.53 or [2001:db8::53]:53)", i, u)
		}
	}
	if t := *c.DNS.TTL; t < 0 || t > 3600 {
		return fmt.Errorf("dns.ttl: %d is not allowed (want seconds from 0 to 3600)", t)
	}
	if c.DNS.CacheSize < 0 {
		return fmt.Errorf("dns.cacheSize: %d is not allowed (want a positive number of entries)", c.DNS.CacheSize)
	}
	return nil
}

// upstreamAddr accepts "IP" or "IP:port" and returns IP:port with port 53 by default.
func upstreamAddr(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53), nil
	}
	return netip.ParseAddrPort(s)
}

func (c *Config) validateEndpoints() error {
	type endpoint struct{ key, value, want string }
	endpoints := []endpoint{
		{"metrics.address", c.Metrics.Address, "host:port, e.g. 127.0.0.1:9310 or :9311"},
		{"health.address", c.Health.Address, "host:port, e.g. 127.0.0.1:9310 or :9311"},
	}
	if c.Proxy.HealthzAddress != NoHealthz {
		endpoints = append(endpoints, endpoint{"proxy.healthzAddress", c.Proxy.HealthzAddress, "host:port, e.g. :10256, or none"})
	}
	for _, e := range endpoints {
		host, port, err := net.SplitHostPort(e.value)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil || n < 0 || n > 65535 {
			return fmt.Errorf("%s: %q is not allowed (want %s)", e.key, e.value, e.want)
		}
		if host != "" {
			if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
				return fmt.Errorf("%s: %q is not allowed (want an IP address or an empty host before the port)", e.key, e.value)
			}
		}
	}
	return nil
}

func (c *Config) validateStandalone() error {
	if !c.Standalone() {
		return nil
	}
	if c.ProxyEnabled() {
		return fmt.Errorf("proxy.enabled: true is not allowed with kubeconfig: none (Services need the API server; set proxy.enabled: false)")
	}
	if c.DNSEnabled() {
		return fmt.Errorf("dns.enabled: true is not allowed with kubeconfig: none (cluster DNS needs the API server; set dns.enabled: false)")
	}
	if len(c.PodCIDRs) == 0 {
		return fmt.Errorf("podCIDRs: [] is not allowed with kubeconfig: none (without the Node object the pod ranges must be given)")
	}
	return nil
}

// isDNSName reports whether s is a lower-case RFC 1123 subdomain.
func isDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
				return false
			}
		}
	}
	return true
}
