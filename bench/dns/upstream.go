package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"

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
// other types and NXDOMAIN for anything else, over UDP and TCP.
type upstream struct {
	names   int
	queries atomic.Int64 // every query it was asked, to show how often the caches went upstream
	servers []*dns.Server
	wg      sync.WaitGroup
}

func startUpstream(outside *lab.Netns, names int) (*upstream, error) {
	u := &upstream{names: names}
	var pc net.PacketConn
	var ln net.Listener
	err := outside.Do(func() (err error) {
		if pc, err = net.ListenPacket("udp4", upstreamAddr.String()); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", upstreamAddr.String())
		return err
	})
	if err != nil {
		if pc != nil {
			pc.Close()
		}
		return nil, fmt.Errorf("upstream on %s: %w", upstreamAddr, err)
	}
	u.servers = []*dns.Server{{PacketConn: pc, Handler: u}, {Listener: ln, Handler: u}}
	for _, s := range u.servers {
		u.wg.Go(func() {
			// ActivateAndServe returns when stop shuts the server down.
			_ = s.ActivateAndServe()
		})
	}
	return u, nil
}

func (u *upstream) stop() {
	for _, s := range u.servers {
		// Shutdown fails only for a server that never started, which Wait then covers.
		_ = s.Shutdown()
	}
	u.wg.Wait()
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
