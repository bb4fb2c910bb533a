package lab

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// NodeLocalDNS is the address pods send their queries to, as kubelet's clusterDNS names it.
const NodeLocalDNS = "169.254.20.10"

// UpstreamDNS is where every cluster node forwards names outside the cluster: a server on the
// outside host that a test starts with ServeUpstreamDNS. No query ever leaves the lab.
const UpstreamDNS = OutsideAddr

// UpstreamServer is an authoritative server for a few names, standing for the world's DNS.
type UpstreamServer struct {
	udp, tcp *dns.Server
	queries  atomic.Int64
	mu       sync.Mutex
	records  map[string]string // lower-case fully qualified name → IPv4 address
}

// ServeUpstreamDNS starts an UpstreamServer on addr:53 inside the namespace, UDP and TCP, that
// answers A queries for records (name → IPv4 address) and NXDOMAIN for other names.
func (n *Netns) ServeUpstreamDNS(addr string, records map[string]string) (*UpstreamServer, error) {
	s := &UpstreamServer{records: map[string]string{}}
	for name, ip := range records {
		s.records[strings.ToLower(dns.Fqdn(name))] = ip
	}
	var pc net.PacketConn
	var l net.Listener
	err := n.Do(func() (err error) {
		if pc, err = net.ListenPacket("udp", net.JoinHostPort(addr, "53")); err != nil {
			return err
		}
		l, err = net.Listen("tcp", net.JoinHostPort(addr, "53"))
		return err
	})
	if err != nil {
		if pc != nil {
			pc.Close()
		}
		return nil, fmt.Errorf("upstream DNS on %s: %w", addr, err)
	}
	handler := dns.HandlerFunc(s.answer)
	s.udp = &dns.Server{PacketConn: pc, Handler: handler}
	s.tcp = &dns.Server{Listener: l, Handler: handler}
	go func() { _ = s.udp.ActivateAndServe() }() // returns when Stop shuts it down
	go func() { _ = s.tcp.ActivateAndServe() }()
	return s, nil
}

func (s *UpstreamServer) answer(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	q := req.Question[0]
	s.mu.Lock()
	ip, ok := s.records[strings.ToLower(q.Name)]
	s.mu.Unlock()
	switch {
	case !ok:
		resp.Rcode = dns.RcodeNameError
		soa, _ := dns.NewRR(". 60 IN SOA ns.upstream. hostmaster.upstream. 1 7200 1800 86400 60")
		resp.Ns = []dns.RR{soa}
	case q.Qtype == dns.TypeA:
		rr, _ := dns.NewRR(fmt.Sprintf("%s 30 IN A %s", q.Name, ip))
		resp.Answer = []dns.RR{rr}
	}
	_ = w.WriteMsg(resp) // a client that went away needs no answer
}

// Set adds or changes a record.
func (s *UpstreamServer) Set(name, ip string) {
	s.mu.Lock()
	s.records[strings.ToLower(dns.Fqdn(name))] = ip
	s.mu.Unlock()
}

// Queries is how many queries the server has received.
func (s *UpstreamServer) Queries() int64 { return s.queries.Load() }

// Stop shuts the server down.
func (s *UpstreamServer) Stop() {
	_ = s.udp.Shutdown() // errors only when it never started, and then there is nothing to stop
	_ = s.tcp.Shutdown()
}

// PodResolvConf is the resolv.conf kubelet writes for a pod of namespace with dnsPolicy
// ClusterFirst and clusterDNS 169.254.20.10.
func PodResolvConf(namespace string) string {
	return fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n", namespace, NodeLocalDNS)
}

// RunWithResolvConf runs a command inside the namespace with /etc/resolv.conf replaced by
// resolvConf, as a container sees it: the file is bind-mounted in a mount namespace of the
// command's own, so nothing on the machine changes.
func (n *Netns) RunWithResolvConf(resolvConf string, args ...string) (string, error) {
	f, err := os.CreateTemp("", "resolv-*.conf")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(resolvConf); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	script := `mount --bind "$0" /etc/resolv.conf && exec ip netns exec "$1" "${@:2}"`
	argv := append([]string{"--mount", "--propagation", "private", "bash", "-c", script, f.Name(), n.Name}, args...)
	out, err := exec.Command("unshare", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in netns %s with a pod's resolv.conf: %s: %w: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// startDNSKeeper runs `nodenet dns-keeper` for a node, as the DaemonSet's second container does:
// it holds the node's DNS sockets while the daemon restarts.
func (l *Lab) startDNSKeeper(n *Node) error {
	if err := os.MkdirAll(n.RunDir, 0o700); err != nil {
		return err
	}
	_, err := l.startProc(n.NS, "dns-keeper-"+n.Name, filepath.Join(n.Dir, "dns-keeper.log"),
		filepath.Join(l.BinDir, "nodenet"), "dns-keeper", "--socket", filepath.Join(n.RunDir, "dns-keeper.sock"))
	return err
}
