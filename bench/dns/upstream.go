package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/nodenet/nodenet/bench/internal/harness"
	"github.com/nodenet/nodenet/e2e/lab"
)

// The upstream: the authoritative server of the "external" zone, on the lab's outside host, where
// both sides forward whatever is not in the cluster domain.
const (
	externalZone = "example.net."
	externalTTL  = 300 // longer than either cache keeps an answer, so the caches decide
	negativeTTL  = 60
)

var upstreamAddr = netip.AddrPortFrom(netip.MustParseAddr(lab.OutsideAddr), 53)

func externalName(i int) string { return fmt.Sprintf("ext-%d.%s", i, externalZone) }

// externalAddr is the address the upstream gives external name i.
func externalAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(i%254 + 1)}) }

// upstream answers A queries for the names ext-0 … ext-(n-1) of externalZone, NODATA for their
// other types and NXDOMAIN for anything else.
type upstream struct {
	names   int
	queries atomic.Int64 // every query it was asked, to show how often the caches went upstream
}

// startUpstream runs the upstream (`dns upstream`) on the outside host, scheduled like the load
// generator and on its CPU, never the server's: it stands for a server on another machine, which
// answers a cache's refill promptly however busy the node is. (In the benchmark's own process,
// under the fair scheduler beside two real-time programs, it answered so late under load that
// CoreDNS's forwarder timed out.)
func startUpstream(ctx context.Context, l *lab.Lab, outside *lab.Netns, opts options) (*harness.NetnsProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &harness.NetnsProc{Name: "upstream", Lab: l, NS: outside, Argv: []string{self, "upstream", "-names", strconv.Itoa(opts.externalNames)},
		Log: filepath.Join(l.Dir, "upstream.log")}
	if err := onCPU(opts.loadCPU, opts.sched, p.Start); err != nil {
		return nil, err
	}
	probe := &side{name: p.Name, client: outside, proc: p}
	_, err = probe.waitFor(ctx, 10*time.Second, func() error {
		qctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		c, err := outside.Dial(qctx, "udp4", upstreamAddr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		resp, err := exchange(qctx, &dns.Conn{Conn: c}, externalName(0))
		if err == nil {
			err = check(query{externalName(0), externalAddr(0)}, resp)
		}
		return err
	})
	if err != nil {
		return nil, errors.Join(err, p.Stop())
	}
	return p, nil
}

// upstreamQueries stops the upstream and reads how many queries it answered from the last line
// of its log ("queries N").
func upstreamQueries(p *harness.NetnsProc) (int64, error) {
	if err := p.Stop(); err != nil {
		return 0, err
	}
	last := lab.Tail(p.Log, 1)
	n, err := strconv.ParseInt(strings.TrimPrefix(last, "queries "), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("upstream log: %q: %w", last, err)
	}
	return n, nil
}

// upstreamMain is the upstream's main (`dns upstream -names N`): it serves upstreamAddr over UDP
// and TCP in its namespace until SIGTERM, then prints how many queries it answered.
func upstreamMain(args []string, out io.Writer) error {
	u := &upstream{}
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	fs.IntVar(&u.names, "names", 1000, "external names ext-0 … ext-(N-1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp4", upstreamAddr.String())
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", upstreamAddr.String())
	if err != nil {
		pc.Close()
		return err
	}
	servers := []*dns.Server{{PacketConn: pc, Handler: u}, {Listener: ln, Handler: u}}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.ActivateAndServe() }()
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-term:
	case err = <-errc:
	}
	for _, s := range servers {
		// Shutdown fails only for a server that is not running, which errc has reported.
		_ = s.Shutdown()
	}
	fmt.Fprintf(out, "queries %d\n", u.queries.Load())
	return err
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	u.queries.Add(1)
	resp := u.answer(req)
	// A reply that cannot be written is a lost datagram, which the asking cache retries.
	_ = w.WriteMsg(resp)
}

func (u *upstream) answer(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(req)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		resp.Rcode = dns.RcodeFormatError
		return resp
	}
	q := req.Question[0]
	if !dns.IsSubDomain(externalZone, strings.ToLower(q.Name)) {
		resp.Rcode = dns.RcodeRefused // not an open resolver either
		return resp
	}
	resp.Authoritative = true
	i, known := u.index(q.Name)
	switch {
	case known && q.Qtype == dns.TypeA && q.Qclass == dns.ClassINET:
		resp.Answer = []dns.RR{&dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: externalTTL},
			A:   externalAddr(i).AsSlice(),
		}}
	case known:
		resp.Ns = []dns.RR{soa()}
	default:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{soa()}
	}
	return resp
}

// index parses "ext-N.<externalZone>" for N below the number of names.
func (u *upstream) index(name string) (int, bool) {
	label, rest, ok := strings.Cut(strings.ToLower(name), ".")
	if !ok || rest != externalZone || !strings.HasPrefix(label, "ext-") {
		return 0, false
	}
	i, err := strconv.Atoi(label[len("ext-"):])
	if err != nil || i < 0 || i >= u.names {
		return 0, false
	}
	return i, true
}

func soa() dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: externalZone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: negativeTTL},
		Ns:  "ns." + externalZone, Mbox: "hostmaster." + externalZone,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: negativeTTL,
	}
}
