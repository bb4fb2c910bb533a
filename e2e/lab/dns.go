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

// UpstreamServer is an authoritative server for a few names, standing for the world's DNS. It
// counts what it receives and sends, name by name, so that tests assert what the node's forwarder
// did rather than how long anything took.
type UpstreamServer struct {
	ns   *Netns
	addr string

	queries atomic.Int64
	forged  atomic.Int64

	mu       sync.Mutex
	records  map[string]upstreamRecord // by lower-case fully qualified name
	spoofed  map[string]bool
	received map[string]*QueryCount
	udp, tcp *dns.Server // nil while stopped
}

type upstreamRecord struct {
	ttl uint32
	ips []string
}

// QueryCount is how many queries the server received for a name, by transport.
type QueryCount struct{ UDP, TCP int }

// DefaultUpstreamTTL is the TTL of records given to ServeUpstreamDNS.
const DefaultUpstreamTTL = 30

// ForgedAddr is the address the forged answers of a spoofed name carry.
const ForgedAddr = "203.0.113.66"

// ServeUpstreamDNS starts an UpstreamServer on addr:53 inside the namespace, UDP and TCP, that
// answers A queries for records (name → IPv4 address, TTL DefaultUpstreamTTL) and NXDOMAIN for
// other names. Over UDP it truncates what does not fit the query's buffer size, as servers do.
func (n *Netns) ServeUpstreamDNS(addr string, records map[string]string) (*UpstreamServer, error) {
	s := &UpstreamServer{ns: n, addr: addr, records: map[string]upstreamRecord{}, spoofed: map[string]bool{}, received: map[string]*QueryCount{}}
	for name, ip := range records {
		s.Set(name, DefaultUpstreamTTL, ip)
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// Start serves again after Stop, with the same records and counters.
func (s *UpstreamServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp != nil {
		return fmt.Errorf("upstream DNS on %s: already serving", s.addr)
	}
	var pc net.PacketConn
	var l net.Listener
	err := s.ns.Do(func() (err error) {
		if pc, err = net.ListenPacket("udp", net.JoinHostPort(s.addr, "53")); err != nil {
			return err
		}
		l, err = net.Listen("tcp", net.JoinHostPort(s.addr, "53"))
		return err
	})
	if err != nil {
		if pc != nil {
			pc.Close()
		}
		return fmt.Errorf("upstream DNS on %s: %w", s.addr, err)
	}
	handler := dns.HandlerFunc(s.answer)
	udp, tcp := &dns.Server{PacketConn: pc, Handler: handler}, &dns.Server{Listener: l, Handler: handler}
	if err := activate(udp); err != nil {
		pc.Close()
		l.Close()
		return fmt.Errorf("upstream DNS on %s: %w", s.addr, err)
	}
	if err := activate(tcp); err != nil {
		_ = udp.Shutdown() // closes pc
		l.Close()
		return fmt.Errorf("upstream DNS on %s: %w", s.addr, err)
	}
	s.udp, s.tcp = udp, tcp
	return nil
}

// activate starts srv serving and returns once it does, so that a Stop right after Start finds
// it running.
func activate(srv *dns.Server) error {
	started := make(chan struct{})
	failed := make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { failed <- srv.ActivateAndServe() }() // returns when Stop shuts it down
	select {
	case <-started:
		return nil
	case err := <-failed:
		return err
	}
}

// Stop shuts the server down and closes its sockets: queries to it are refused. It may be
// called again, and Start serves again.
func (s *UpstreamServer) Stop() {
	s.mu.Lock()
	udp, tcp := s.udp, s.tcp
	s.udp, s.tcp = nil, nil
	s.mu.Unlock()
	if udp == nil {
		return
	}
	// Both were started by Start, so Shutdown cannot fail with "not started".
	_ = udp.Shutdown()
	_ = tcp.Shutdown()
}

func (s *UpstreamServer) answer(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	resp := new(dns.Msg)
	if len(req.Question) != 1 {
		resp.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(resp) // a client that went away needs no answer
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	_, overUDP := w.RemoteAddr().(*net.UDPAddr)
	s.mu.Lock()
	rec, known := s.records[name]
	spoof := s.spoofed[name] && overUDP
	c := s.received[name]
	if c == nil {
		c = &QueryCount{}
		s.received[name] = c
	}
	if overUDP {
		c.UDP++
	} else {
		c.TCP++
	}
	s.mu.Unlock()

	resp.SetReply(req)
	resp.Authoritative = true
	switch {
	case !known:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{&dns.SOA{
			Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns:  "ns.upstream.", Mbox: "hostmaster.upstream.", Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: 60,
		}}
	case q.Qtype == dns.TypeA:
		for _, ip := range rec.ips {
			resp.Answer = append(resp.Answer, aRecord(q.Name, rec.ttl, ip))
		}
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(dns.DefaultMsgSize, false)
		size = int(opt.UDPSize())
	}
	if spoof {
		s.sendForged(w, req)
	}
	if overUDP {
		resp.Truncate(size)
	}
	_ = w.WriteMsg(resp)
}

// sendForged sends, from the socket the genuine answer leaves from, two answers an off-path
// attacker could have guessed, both saying the name is at ForgedAddr: one with the wrong ID, one
// with the right ID but another question.
func (s *UpstreamServer) sendForged(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	wrongID := new(dns.Msg)
	wrongID.SetReply(req)
	wrongID.Id = req.Id + 1
	wrongID.Answer = []dns.RR{aRecord(q.Name, DefaultUpstreamTTL, ForgedAddr)}
	wrongQuestion := new(dns.Msg)
	wrongQuestion.SetReply(req)
	wrongQuestion.Question[0].Name = "forged." + q.Name
	wrongQuestion.Answer = []dns.RR{aRecord(q.Name, DefaultUpstreamTTL, ForgedAddr)}
	for _, m := range []*dns.Msg{wrongID, wrongQuestion} {
		if w.WriteMsg(m) == nil {
			s.forged.Add(1)
		}
	}
}

func aRecord(name string, ttl uint32, ip string) *dns.A {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP(ip)}
}

// Set adds or replaces the A records of a name, all with the given TTL.
func (s *UpstreamServer) Set(name string, ttl uint32, ips ...string) {
	s.mu.Lock()
	s.records[strings.ToLower(dns.Fqdn(name))] = upstreamRecord{ttl: ttl, ips: ips}
	s.mu.Unlock()
}

// Spoof makes every UDP answer for name follow two forged ones (see sendForged).
func (s *UpstreamServer) Spoof(name string) {
	s.mu.Lock()
	s.spoofed[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// Queries is how many queries the server has received.
func (s *UpstreamServer) Queries() int64 { return s.queries.Load() }

// QueriesFor is how many queries the server has received for name, by transport.
func (s *UpstreamServer) QueriesFor(name string) QueryCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.received[strings.ToLower(dns.Fqdn(name))]; c != nil {
		return *c
	}
	return QueryCount{}
}

// Forged is how many forged answers the server has sent.
func (s *UpstreamServer) Forged() int64 { return s.forged.Load() }

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
