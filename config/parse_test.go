package config_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nodenet/nodenet/config"
)

// netip types keep their state in unexported fields; == is their documented equality.
var cmpNetip = cmp.Options{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
}

// designExample is the "Config file keys" block of /work/shared/DESIGN.md, verbatim. It is the
// documented contract, so it must keep parsing to the documented defaults.
const designExample = `apiVersion: nodenet.dev/v1alpha1
kind: NodenetConfig
nodeName: ""                 # default: $NODE_NAME, else hostname
kubeconfig: ""               # "" = in-cluster service account
clusterCIDRs: [10.244.0.0/16]
serviceCIDRs: [10.96.0.0/12]
podCIDRs: []                 # default: Node.spec.podCIDRs (override for tests/bootstrap)
clusterDomain: cluster.local
stateDir: /var/lib/nodenet
runDir: /run/nodenet
cni: {binDir: /opt/cni/bin, confDir: /etc/cni/net.d, bridge: nodenet0, mtu: 0}
routing: {mode: auto}        # auto | direct | vxlan
proxy: {enabled: true, nodePortAddresses: [], masqueradeAll: false}
dns: {enabled: true, listen: [169.254.20.10], upstreams: [], cacheSize: 10000}
metrics: {address: "127.0.0.1:9310"}
health: {address: ":9311"}
logging: {level: info, format: json}
`

func ptr[T any](v T) *T { return &v }

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// defaults is what an empty document turns into with NODE_NAME=node-a.
func defaults() config.Config {
	return config.Config{
		APIVersion:    "nodenet.dev/v1alpha1",
		Kind:          "NodenetConfig",
		NodeName:      "node-a",
		ClusterCIDRs:  prefixes("10.244.0.0/16"),
		ServiceCIDRs:  prefixes("10.96.0.0/12"),
		APIServer:     config.APIServer{KubeletKubeconfigs: []string{"/host/etc/kubernetes/kubelet.conf"}},
		ClusterDomain: "cluster.local",
		StateDir:      "/var/lib/nodenet",
		RunDir:        "/run/nodenet",
		CNI:           config.CNI{BinDir: "/opt/cni/bin", ConfDir: "/etc/cni/net.d", Bridge: "nodenet0"},
		Routing:       config.Routing{Mode: "auto"},
		Proxy:         config.Proxy{HealthzAddress: ":10256"},
		DNS:           config.DNS{Listen: addrs("169.254.20.10"), CacheSize: 10000, TTL: ptr(5), ResolvConf: "/etc/resolv.conf"},
		Metrics:       config.Endpoint{Address: "127.0.0.1:9310"},
		Health:        config.Endpoint{Address: ":9311"},
		Logging:       config.Logging{Level: "info", Format: "json"},
	}
}

func TestParseValid(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a")
	tests := []struct {
		name string
		doc  string
		want func() config.Config
	}{
		{
			name: "design example",
			doc:  designExample,
			want: func() config.Config {
				c := defaults()
				// Keys written as [] stay empty lists and the booleans are set explicitly, where
				// an empty document leaves them nil.
				c.PodCIDRs = []netip.Prefix{}
				c.Proxy = config.Proxy{Enabled: ptr(true), NodePortAddresses: []netip.Prefix{}, HealthzAddress: ":10256"}
				c.DNS.Enabled = ptr(true)
				c.DNS.Upstreams = []string{}
				return c
			},
		},
		{name: "empty document", doc: "", want: defaults},
		{
			name: "API server URL, no kubelet kubeconfig",
			doc:  "apiServer: {url: \"https://192.0.2.10:6443\", kubeletKubeconfigs: []}",
			want: func() config.Config {
				c := defaults()
				c.APIServer = config.APIServer{URL: "https://192.0.2.10:6443", KubeletKubeconfigs: []string{}}
				return c
			},
		},
		{name: "only whitespace and comments", doc: "\n  # nothing here\n", want: defaults},
		{name: "empty mapping", doc: "{}", want: defaults},
		{name: "explicit nulls mean unset", doc: "nodeName: null\ncni: null\ndns: {cacheSize: null}\n", want: defaults},
		{
			// Every key differs from its default, so a key that is silently ignored shows up.
			name: "every key set",
			doc: `apiVersion: nodenet.dev/v1alpha1
kind: NodenetConfig
nodeName: worker-7.example
kubeconfig: /etc/nodenet/kubeconfig
apiServer: {kubeletKubeconfigs: [/var/lib/kubelet/kubeconfig]}
clusterCIDRs: [10.244.0.0/16, "fd00:10:244::/48"]
serviceCIDRs: [10.96.0.0/12, "fd00:10:96::/112"]
podCIDRs: [10.244.7.0/24, "fd00:10:244:7::/64"]
clusterDomain: k8s.example
stateDir: /var/lib/nodenet-b
runDir: /run/nodenet-b
cni: {binDir: /opt/cni/bin-b, confDir: /etc/cni/net.d-b, bridge: nodenet-b012345, mtu: 1400}
routing: {mode: vxlan}
proxy: {enabled: false, nodePortAddresses: [198.18.0.0/24], masqueradeAll: true, healthzAddress: none}
dns: {enabled: false, listen: [169.254.20.11, "fd00::a"], upstreams: [192.0.2.53, "[2001:db8::53]:5353"], cacheSize: 5, ttl: 0, resolvConf: /run/systemd/resolve/resolv.conf}
metrics: {address: "[::1]:19310"}
health: {address: "localhost:19311"}
logging: {level: debug, format: console}
`,
			want: func() config.Config {
				return config.Config{
					APIVersion:    "nodenet.dev/v1alpha1",
					Kind:          "NodenetConfig",
					NodeName:      "worker-7.example",
					Kubeconfig:    "/etc/nodenet/kubeconfig",
					APIServer:     config.APIServer{KubeletKubeconfigs: []string{"/var/lib/kubelet/kubeconfig"}},
					ClusterCIDRs:  prefixes("10.244.0.0/16", "fd00:10:244::/48"),
					ServiceCIDRs:  prefixes("10.96.0.0/12", "fd00:10:96::/112"),
					PodCIDRs:      prefixes("10.244.7.0/24", "fd00:10:244:7::/64"),
					ClusterDomain: "k8s.example",
					StateDir:      "/var/lib/nodenet-b",
					RunDir:        "/run/nodenet-b",
					CNI:           config.CNI{BinDir: "/opt/cni/bin-b", ConfDir: "/etc/cni/net.d-b", Bridge: "nodenet-b012345", MTU: 1400},
					Routing:       config.Routing{Mode: "vxlan"},
					Proxy:         config.Proxy{Enabled: ptr(false), NodePortAddresses: prefixes("198.18.0.0/24"), MasqueradeAll: true, HealthzAddress: config.NoHealthz},
					DNS: config.DNS{
						Enabled:    ptr(false),
						Listen:     addrs("169.254.20.11", "fd00::a"),
						Upstreams:  []string{"192.0.2.53", "[2001:db8::53]:5353"},
						CacheSize:  5,
						TTL:        ptr(0),
						ResolvConf: "/run/systemd/resolve/resolv.conf",
					},
					Metrics: config.Endpoint{Address: "[::1]:19310"},
					Health:  config.Endpoint{Address: "localhost:19311"},
					Logging: config.Logging{Level: "debug", Format: "console"},
				}
			},
		},
		{
			name: "JSON is YAML too",
			doc:  `{"nodeName": "node-b", "cni": {"mtu": 9000}, "routing": {"mode": "direct"}}`,
			want: func() config.Config {
				c := defaults()
				c.NodeName = "node-b"
				c.CNI.MTU = 9000
				c.Routing.Mode = "direct"
				return c
			},
		},
		{
			name: "standalone with everything that needs the API server off",
			doc:  "kubeconfig: none\npodCIDRs: [10.244.1.0/24]\nproxy: {enabled: false}\ndns: {enabled: false}\n",
			want: func() config.Config {
				c := defaults()
				c.Kubeconfig = "none"
				c.PodCIDRs = prefixes("10.244.1.0/24")
				c.Proxy.Enabled = ptr(false)
				c.DNS.Enabled = ptr(false)
				return c
			},
		},
		{
			name: "boundaries that are allowed",
			doc:  "cni: {mtu: 576, bridge: abcdefghijklmno}\npodCIDRs: [10.244.0.0/30]\nmetrics: {address: \":0\"}\n",
			want: func() config.Config {
				c := defaults()
				c.CNI.MTU = 576
				c.CNI.Bridge = "abcdefghijklmno"
				c.PodCIDRs = prefixes("10.244.0.0/30")
				c.Metrics.Address = ":0"
				return c
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.Parse([]byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want(), *got, cmpNetip); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseEnabledAccessors(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a")
	tests := []struct {
		doc                            string
		wantProxy, wantDNS, standalone bool
	}{
		{doc: "", wantProxy: true, wantDNS: true},
		{doc: "proxy: {enabled: true}\ndns: {enabled: true}", wantProxy: true, wantDNS: true},
		{doc: "proxy: {enabled: false}", wantProxy: false, wantDNS: true},
		{doc: "dns: {enabled: false}", wantProxy: true, wantDNS: false},
		{doc: "kubeconfig: none\npodCIDRs: [10.244.1.0/24]\nproxy: {enabled: false}\ndns: {enabled: false}", standalone: true},
	}
	for _, tt := range tests {
		t.Run(tt.doc, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got := []bool{c.ProxyEnabled(), c.DNSEnabled(), c.Standalone()}
			want := []bool{tt.wantProxy, tt.wantDNS, tt.standalone}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ProxyEnabled, DNSEnabled, Standalone (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseDefaultNodeNameFromHostname(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	host, err := os.Hostname()
	if err != nil {
		t.Fatalf("Hostname: %v", err)
	}
	want := strings.ToLower(host)
	c, err := config.Parse(nil)
	if err != nil {
		// The hostname is the machine's; if it is no DNS name the daemon must refuse it by name.
		wantErr := `config: nodeName: "` + want + `" is not allowed (want a lower-case DNS name, as Kubernetes Node names are)`
		if err.Error() != wantErr {
			t.Fatalf("Parse with hostname %q: error %q, want nil or %q", host, err, wantErr)
		}
		return
	}
	if c.NodeName != want {
		t.Errorf("NodeName = %q, want %q (the lower-cased hostname)", c.NodeName, want)
	}
}

func TestParseErrors(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a")
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{
			name: "unknown top-level key",
			doc:  "clusterCIDR: [10.244.0.0/16]",
			want: "config: clusterCIDR: unknown key (allowed: apiServer, apiVersion, clusterCIDRs, clusterDomain, cni, dns, health, kind, kubeconfig, logging, metrics, nodeName, podCIDRs, proxy, routing, runDir, serviceCIDRs, stateDir)",
		},
		{
			name: "unknown nested key",
			doc:  "cni: {mtuu: 1500}",
			want: "config: cni.mtuu: unknown key (allowed: binDir, bridge, confDir, mtu)",
		},
		{
			name: "wrong type string for int",
			doc:  `cni: {mtu: "x"}`,
			want: `config: cni.mtu: "x" is not allowed (want a whole number)`,
		},
		{
			name: "dns.ttl too long",
			doc:  `dns: {ttl: 86400}`,
			want: `config: dns.ttl: 86400 is not allowed (want seconds from 0 to 3600)`,
		},
		{
			name: "dns.resolvConf relative",
			doc:  `dns: {resolvConf: resolv.conf}`,
			want: `config: dns.resolvConf: "resolv.conf" is not allowed (want an absolute path)`,
		},
		{
			name: "wrong type fraction for int",
			doc:  `dns: {cacheSize: 1.5}`,
			want: `config: dns.cacheSize: 1.5 is not allowed (want a whole number)`,
		},
		{
			name: "wrong type string for bool",
			doc:  `proxy: {enabled: "yes"}`,
			want: `config: proxy.enabled: "yes" is not allowed (want true or false)`,
		},
		{
			name: "wrong type scalar for list",
			doc:  `clusterCIDRs: 10.244.0.0/16`,
			want: `config: clusterCIDRs: "10.244.0.0/16" is not allowed (want a list)`,
		},
		{
			name: "wrong type scalar for mapping",
			doc:  `cni: nodenet0`,
			want: `config: cni: "nodenet0" is not allowed (want a mapping)`,
		},
		{
			name: "document is not a mapping",
			doc:  `- a`,
			want: `config: document: ["a"] is not allowed (want a mapping)`,
		},
		{
			name: "wrong type number for string",
			doc:  `stateDir: 5`,
			want: `config: stateDir: 5 is not allowed (want a string)`,
		},
		{
			name: "bad CIDR string",
			doc:  "clusterCIDRs: [10.244.0.0/33]",
			want: `config: clusterCIDRs[0]: "10.244.0.0/33" is not allowed (want a CIDR such as 10.244.0.0/16 or fd00::/48)`,
		},
		{
			name: "CIDR is not a string",
			doc:  "serviceCIDRs: [10.96.0.0/12, 7]",
			want: `config: serviceCIDRs[1]: 7 is not allowed (want a string)`,
		},
		{
			name: "bad listen address",
			doc:  "dns: {listen: [169.254.20.300]}",
			want: `config: dns.listen[0]: "169.254.20.300" is not allowed (want an IP address such as 169.254.20.10)`,
		},
		{
			// A YAML list item left empty ("- ") decodes to null; it must not become the zero
			// prefix, which every later check would wave through.
			name: "null CIDR in a list",
			doc:  "clusterCIDRs:\n- 10.244.0.0/16\n-\n",
			want: `config: clusterCIDRs[1]: null is not allowed (want a CIDR such as 10.244.0.0/16 or fd00::/48)`,
		},
		{
			name: "null address in a list",
			doc:  "dns: {listen: [null]}",
			want: `config: dns.listen[0]: null is not allowed (want an IP address such as 169.254.20.10)`,
		},
		{
			name: "null upstream in a list",
			doc:  "dns: {upstreams: [~]}",
			want: `config: dns.upstreams[0]: null is not allowed (want a string)`,
		},
		{
			// The second block would otherwise silently replace the first (mtu back to 0).
			name: "key given twice",
			doc:  "cni: {mtu: 1400}\nrouting: {mode: direct}\ncni: {bridge: br0}\n",
			want: `config: not valid YAML: yaml: unmarshal errors: line 3: key "cni" already set in map`,
		},
		{
			name: "nested key given twice",
			doc:  "dns: {cacheSize: 5, cacheSize: 6}",
			want: `config: not valid YAML: yaml: unmarshal errors: line 1: key "cacheSize" already set in map`,
		},
		{
			name: "unmasked CIDR",
			doc:  "clusterCIDRs: [10.244.0.1/16]",
			want: `config: clusterCIDRs[0]: "10.244.0.1/16" is not allowed (want the network address: 10.244.0.0/16)`,
		},
		{
			name: "unmasked nodePortAddresses",
			doc:  "proxy: {nodePortAddresses: [198.18.0.1/24]}",
			want: `config: proxy.nodePortAddresses[0]: "198.18.0.1/24" is not allowed (want the network address: 198.18.0.0/24)`,
		},
		{
			name: "clusterCIDRs empty",
			doc:  "clusterCIDRs: []",
			want: `config: clusterCIDRs: [] is not allowed (want at least one CIDR)`,
		},
		{
			name: "serviceCIDRs overlap clusterCIDRs",
			doc:  "serviceCIDRs: [10.244.128.0/20]",
			want: `config: serviceCIDRs[0]: "10.244.128.0/20" is not allowed (it overlaps clusterCIDRs[0] 10.244.0.0/16; ranges must be disjoint)`,
		},
		{
			name: "clusterCIDRs overlap each other",
			doc:  "clusterCIDRs: [10.0.0.0/8, 10.244.0.0/16]",
			want: `config: clusterCIDRs[1]: "10.244.0.0/16" is not allowed (it overlaps clusterCIDRs[0] 10.0.0.0/8; ranges must be disjoint)`,
		},
		{
			name: "podCIDRs overlap each other",
			doc:  "podCIDRs: [10.244.1.0/24, 10.244.1.128/25]",
			want: `config: podCIDRs[1]: "10.244.1.128/25" is not allowed (it overlaps podCIDRs[0] 10.244.1.0/24)`,
		},
		{
			name: "podCIDR outside clusterCIDRs",
			doc:  "podCIDRs: [10.245.1.0/24]",
			want: `config: podCIDRs[0]: "10.245.1.0/24" is not allowed (want a range inside clusterCIDRs [10.244.0.0/16], or pod-to-pod traffic would be masqueraded)`,
		},
		{
			name: "podCIDR larger than its clusterCIDR",
			doc:  "podCIDRs: [10.0.0.0/8]",
			want: `config: podCIDRs[0]: "10.0.0.0/8" is not allowed (want a range inside clusterCIDRs [10.244.0.0/16], or pod-to-pod traffic would be masqueraded)`,
		},
		{
			name: "podCIDR /32",
			doc:  "podCIDRs: [10.244.1.1/32]",
			want: `config: podCIDRs[0]: "10.244.1.1/32" is not allowed (too small for pods: want /30 or larger for IPv4, /126 or larger for IPv6)`,
		},
		{
			name: "podCIDR /127",
			doc:  "clusterCIDRs: [\"fd00::/48\"]\npodCIDRs: [\"fd00::/127\"]",
			want: `config: podCIDRs[0]: "fd00::/127" is not allowed (too small for pods: want /30 or larger for IPv4, /126 or larger for IPv6)`,
		},
		{
			name: "relative stateDir",
			doc:  "stateDir: var/lib/nodenet",
			want: `config: stateDir: "var/lib/nodenet" is not allowed (want an absolute path)`,
		},
		{
			name: "unclean runDir",
			doc:  "runDir: /run//nodenet/",
			want: `config: runDir: "/run//nodenet/" is not allowed (want a clean absolute path: /run/nodenet)`,
		},
		{
			name: "unclean cni.confDir",
			doc:  "cni: {confDir: /etc/cni/../cni/net.d}",
			want: `config: cni.confDir: "/etc/cni/../cni/net.d" is not allowed (want a clean absolute path: /etc/cni/net.d)`,
		},
		{
			name: "apiServer.url with kubeconfig",
			doc:  "kubeconfig: /etc/nodenet/kubeconfig\napiServer: {url: \"https://192.0.2.10:6443\"}",
			want: `config: apiServer.url: "https://192.0.2.10:6443" is not allowed with kubeconfig: /etc/nodenet/kubeconfig (the kubeconfig names the server)`,
		},
		{
			name: "apiServer.url without https",
			doc:  "apiServer: {url: \"192.0.2.10:6443\"}",
			want: `config: apiServer.url: "192.0.2.10:6443" is not allowed (want https://HOST[:PORT])`,
		},
		{
			name: "relative kubelet kubeconfig",
			doc:  "apiServer: {kubeletKubeconfigs: [kubelet.conf]}",
			want: `config: apiServer.kubeletKubeconfigs[0]: "kubelet.conf" is not allowed (want a clean absolute path)`,
		},
		{
			name: "relative kubeconfig",
			doc:  "kubeconfig: kubeconfig.yaml",
			want: `config: kubeconfig: "kubeconfig.yaml" is not allowed (want an absolute path)`,
		},
		{
			name: "bridge name too long",
			doc:  "cni: {bridge: nodenet-bridge-0}",
			want: `config: cni.bridge: "nodenet-bridge-0" is not allowed (want an interface name of 1 to 15 characters without '/', ':' or spaces)`,
		},
		{
			name: "bridge name with slash",
			doc:  "cni: {bridge: nodenet/0}",
			want: `config: cni.bridge: "nodenet/0" is not allowed (want an interface name of 1 to 15 characters without '/', ':' or spaces)`,
		},
		{
			name: "mtu 100",
			doc:  "cni: {mtu: 100}",
			want: `config: cni.mtu: 100 is not allowed (want 0 for the uplink's MTU, or 576..65535)`,
		},
		{
			name: "mtu above 65535",
			doc:  "cni: {mtu: 65536}",
			want: `config: cni.mtu: 65536 is not allowed (want 0 for the uplink's MTU, or 576..65535)`,
		},
		{
			name: "mtu 1000 with an IPv6 cluster CIDR",
			doc:  "clusterCIDRs: [10.244.0.0/16, \"fd00:10:244::/48\"]\ncni: {mtu: 1000}",
			want: `config: cni.mtu: 1000 is not allowed (want 0 for the uplink's MTU, or 1280..65535)`,
		},
		{
			name: "bad routing.mode",
			doc:  "routing: {mode: bgp}",
			want: `config: routing.mode: "bgp" is not allowed (want auto, direct or vxlan)`,
		},
		{
			name: "bad logging.level",
			doc:  "logging: {level: trace}",
			want: `config: logging.level: "trace" is not allowed (want debug, info, warn or error)`,
		},
		{
			name: "bad logging.format",
			doc:  "logging: {format: text}",
			want: `config: logging.format: "text" is not allowed (want json or console)`,
		},
		{
			name: "dns.listen wildcard",
			doc:  "dns: {listen: [169.254.20.10, 0.0.0.0]}",
			want: `config: dns.listen[1]: "0.0.0.0" is not allowed (want a unicast address such as 169.254.20.10; never a wildcard: nodenet is not an open resolver)`,
		},
		{
			name: "dns.listen IPv6 wildcard",
			doc:  `dns: {listen: ["::"]}`,
			want: `config: dns.listen[0]: "::" is not allowed (want a unicast address such as 169.254.20.10; never a wildcard: nodenet is not an open resolver)`,
		},
		{
			name: "bad upstream",
			doc:  `dns: {upstreams: [192.0.2.53, "dns.example:53"]}`,
			want: `config: dns.upstreams[1]: "dns.example:53" is not allowed (want IP or IP:port, e.g. 192.0.2.53 or [2001:db8::53]:53)`,
		},
		{
			name: "negative cacheSize",
			doc:  "dns: {cacheSize: -1}",
			want: `config: dns.cacheSize: -1 is not allowed (want a positive number of entries)`,
		},
		{
			name: "metrics address without port",
			doc:  "metrics: {address: 127.0.0.1}",
			want: `config: metrics.address: "127.0.0.1" is not allowed (want host:port, e.g. 127.0.0.1:9310 or :9311)`,
		},
		{
			name: "metrics port out of range",
			doc:  `metrics: {address: "127.0.0.1:65536"}`,
			want: `config: metrics.address: "127.0.0.1:65536" is not allowed (want host:port, e.g. 127.0.0.1:9310 or :9311)`,
		},
		{
			name: "metrics host name",
			doc:  `metrics: {address: "metrics.example:9310"}`,
			want: `config: metrics.address: "metrics.example:9310" is not allowed (want an IP address or an empty host before the port)`,
		},
		{
			name: "health port not a number",
			doc:  `health: {address: ":http"}`,
			want: `config: health.address: ":http" is not allowed (want host:port, e.g. 127.0.0.1:9310 or :9311)`,
		},
		{
			name: "proxy healthz address without a port",
			doc:  `proxy: {healthzAddress: "0.0.0.0"}`,
			want: `config: proxy.healthzAddress: "0.0.0.0" is not allowed (want host:port, e.g. :10256, or none)`,
		},
		{
			name: "kubeconfig none with proxy enabled",
			doc:  "kubeconfig: none\npodCIDRs: [10.244.1.0/24]\ndns: {enabled: false}",
			want: `config: proxy.enabled: true is not allowed with kubeconfig: none (Services need the API server; set proxy.enabled: false)`,
		},
		{
			name: "kubeconfig none with dns enabled",
			doc:  "kubeconfig: none\npodCIDRs: [10.244.1.0/24]\nproxy: {enabled: false}",
			want: `config: dns.enabled: true is not allowed with kubeconfig: none (cluster DNS needs the API server; set dns.enabled: false)`,
		},
		{
			name: "kubeconfig none without podCIDRs",
			doc:  "kubeconfig: none\nproxy: {enabled: false}\ndns: {enabled: false}",
			want: `config: podCIDRs: [] is not allowed with kubeconfig: none (without the Node object the pod ranges must be given)`,
		},
		{
			name: "wrong apiVersion",
			doc:  "apiVersion: nodenet.dev/v1",
			want: `config: apiVersion: "nodenet.dev/v1" is not allowed (want nodenet.dev/v1alpha1)`,
		},
		{
			name: "wrong kind",
			doc:  "kind: KubeProxyConfiguration",
			want: `config: kind: "KubeProxyConfiguration" is not allowed (want NodenetConfig)`,
		},
		{
			name: "upper-case nodeName",
			doc:  "nodeName: Node-A",
			want: `config: nodeName: "Node-A" is not allowed (want a lower-case DNS name, as Kubernetes Node names are)`,
		},
		{
			name: "nodeName with underscore",
			doc:  "nodeName: node_a",
			want: `config: nodeName: "node_a" is not allowed (want a lower-case DNS name, as Kubernetes Node names are)`,
		},
		{
			name: "bad clusterDomain",
			doc:  "clusterDomain: cluster..local",
			want: `config: clusterDomain: "cluster..local" is not allowed (want a DNS name such as cluster.local)`,
		},
		{
			name: "file larger than 1 MiB",
			doc:  "# " + strings.Repeat("x", 1<<20) + "\n",
			want: `config: file is 1048579 bytes, more than the 1048576 allowed`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want error %q", got, tt.want)
			}
			if diff := cmp.Diff(tt.want, err.Error()); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			// The daemon prints this as its last words; a second line would be lost in most log views.
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error has more than one line: %q", err)
			}
		})
	}
}

// TestParseErrorsOneLine covers errors whose text comes from a library (YAML, JSON), where only
// the shape is ours to promise.
func TestParseErrorsOneLine(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a")
	for _, doc := range []string{
		"cni: {mtu: 1",
		"a: b: c",
		"\tkey: value",
		"cni:\n  mtu: 1\n mtu: 2\n",
	} {
		t.Run(doc, func(t *testing.T) {
			_, err := config.Parse([]byte(doc))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			if !strings.HasPrefix(err.Error(), "config: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line starting with \"config: \"", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a")
	dir := t.TempDir()
	path := filepath.Join(dir, "nodenet.yaml")
	if err := os.WriteFile(path, []byte(designExample), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.NodeName != "node-a" || c.CNI.Bridge != "nodenet0" {
		t.Errorf("Load = nodeName %q, bridge %q; want node-a, nodenet0", c.NodeName, c.CNI.Bridge)
	}

	missing := filepath.Join(dir, "missing.yaml")
	_, err = config.Load(missing)
	want := "read config: open " + missing + ": no such file or directory"
	if err == nil || err.Error() != want {
		t.Errorf("Load(missing) error = %v, want %q", err, want)
	}
}
