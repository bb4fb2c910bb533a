package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"

	mdns "github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/wire"
	"github.com/nodenet/nodenet/dns/zone"
)

// answer is one response with what the metrics need to know of it.
type answer struct {
	wire   []byte
	rcode  int
	source string
}

// fast answers req from memory, appending the response to dst. ok is false when the query needs
// the slow path: an upstream, an alias to chase, or a request the wire reader leaves to miekg/dns.
// A request too broken to answer gives ok with an empty response: it is dropped. Over UDP the
// response is kept within what the client can receive. names is the reader's table of question
// names (nil: none).
func (s *Server) fast(req, dst []byte, udp bool, names *wire.Names) (a answer, q wire.Query, ok bool) {
	q, err := wire.ParseQuery(req, names)
	maxSize := maxTCPMessage
	if udp {
		maxSize = udpLimit(q)
	}
	switch {
	case errors.Is(err, wire.ErrNotPlain):
		return a, q, false
	case err != nil:
		return s.formErr(req, dst), q, true
	case q.Opcode != mdns.OpcodeQuery:
		return s.headerOnly(req, dst, mdns.RcodeNotImplemented), q, true
	case q.Class != mdns.ClassINET:
		return a, q, false
	}
	generation := s.cfg.Zone.Generation()
	if a, ok := s.answers.appendAnswer(dst, req, q, generation); ok {
		return a, q, true
	}
	if r := s.cfg.Zone.Answer(q.Name, q.Type); !r.OutsideZone {
		if r.Alias != "" {
			return a, q, false
		}
		return s.remember(q, s.reply(req, q, r, dst, maxSize), len(dst), generation), q, true
	}
	if strings.HasSuffix(q.Name, ".arpa.") {
		if r, owned := s.cfg.Zone.Reverse(q.Name, q.Type); owned {
			return s.remember(q, s.reply(req, q, r, dst, maxSize), len(dst), generation), q, true
		}
	}
	limit := maxSize
	if q.EDNS {
		limit -= optLen
	}
	if out, hit := s.cfg.Forwarder.AppendCached(dst, q.Key(), q.ID, limit); hit {
		msg := out[len(dst):]
		echoQuestion(msg, req, q)
		setRD(msg, q.RD)
		if q.EDNS {
			out = appendOPT(out, len(dst), q.DO)
		}
		return answer{wire: out, rcode: int(msg[3] & 0xf), source: sourceCache}, q, true
	}
	return a, q, false
}

// remember keeps a zone answer (the message starts at msgStart in a.wire) for the next query of
// the same name and type at the same zone generation.
func (s *Server) remember(q wire.Query, a answer, msgStart int, generation uint64) answer {
	if a.source == sourceZone && len(a.wire) > msgStart {
		s.answers.store(q, a.wire[msgStart:], a, generation)
	}
	return a
}

// udpLimit is the largest UDP response for q.
func udpLimit(q wire.Query) int {
	if !q.EDNS {
		return wire.MinUDPSize
	}
	return min(int(q.UDPSize), maxUDPResponse)
}

// slow answers req in full: it may wait for an upstream.
func (s *Server) slow(ctx context.Context, req, dst []byte, udp bool) answer {
	var m mdns.Msg
	if err := m.Unpack(req); err != nil || m.Response || len(m.Question) != 1 {
		return s.formErr(req, dst)
	}
	if m.Opcode != mdns.OpcodeQuery {
		return s.headerOnly(req, dst, mdns.RcodeNotImplemented)
	}
	question := m.Question[0]
	name, qtype := strings.ToLower(question.Name), question.Qtype
	resp := new(mdns.Msg)
	source := sourceZone
	r := s.cfg.Zone.Answer(name, qtype)
	rev, owned := zone.Response{}, false
	if r.OutsideZone && strings.HasSuffix(name, ".arpa.") {
		rev, owned = s.cfg.Zone.Reverse(name, qtype)
	}
	switch {
	case !r.OutsideZone && question.Qclass != mdns.ClassINET:
		resp.Rcode = mdns.RcodeRefused
	case !r.OutsideZone:
		fill(resp, r)
		if r.Alias != "" {
			s.chase(ctx, &m, resp, r.Alias, qtype)
		}
	case owned:
		fill(resp, rev)
	default:
		source = sourceUpstream
		up := s.cfg.Forwarder.Resolve(ctx, &m)
		resp.Rcode = up.Rcode
		resp.Authoritative = up.Authoritative
		resp.Answer, resp.Ns = up.Answer, up.Ns
		resp.Extra = withoutOPT(up.Extra)
	}
	resp.Id = m.Id
	resp.Response = true
	resp.Opcode = mdns.OpcodeQuery
	resp.RecursionDesired = m.RecursionDesired
	resp.RecursionAvailable = true
	resp.CheckingDisabled = m.CheckingDisabled
	resp.Question = m.Question
	resp.Compress = true
	maxSize := maxTCPMessage
	if udp {
		maxSize = wire.MinUDPSize
	}
	if opt := m.IsEdns0(); opt != nil {
		resp.SetEdns0(maxUDPResponse, opt.Do())
		if udp {
			maxSize = min(max(int(opt.UDPSize()), wire.MinUDPSize), maxUDPResponse)
		}
	}
	resp.Truncate(maxSize)
	out, err := packAppend(resp, dst)
	if err != nil {
		s.log.Debug("pack response", zap.Error(err))
		return s.headerOnly(req, dst, mdns.RcodeServerFailure)
	}
	return answer{wire: out, rcode: resp.Rcode, source: source}
}

// chase follows an ExternalName alias: within the cluster domain through the zone, elsewhere
// through the forwarder, appending what it finds to resp. The response code becomes the one of
// the last name in the chain (RFC 6604).
func (s *Server) chase(ctx context.Context, req, resp *mdns.Msg, target string, qtype uint16) {
	for range chaseLimit {
		r := s.cfg.Zone.Answer(target, qtype)
		if r.OutsideZone {
			q := new(mdns.Msg)
			q.SetQuestion(target, qtype)
			q.RecursionDesired = true
			if opt := req.IsEdns0(); opt != nil {
				q.SetEdns0(maxUDPResponse, opt.Do())
			}
			up := s.cfg.Forwarder.Resolve(ctx, q)
			resp.Answer = append(resp.Answer, up.Answer...)
			resp.Rcode = up.Rcode
			return
		}
		resp.Answer = append(resp.Answer, r.Answer...)
		resp.Rcode = r.Rcode
		if r.Alias == "" {
			if len(r.Answer) == 0 {
				resp.Ns = r.Ns
			}
			return
		}
		target = r.Alias
	}
	resp.Rcode = mdns.RcodeServerFailure
}

// fill copies the zone's sections into resp.
func fill(resp *mdns.Msg, r zone.Response) {
	resp.Rcode = r.Rcode
	resp.Authoritative = r.AuthoritativeAnswer
	resp.Answer, resp.Ns, resp.Extra = r.Answer, r.Ns, r.Extra
}

func withoutOPT(rrs []mdns.RR) []mdns.RR {
	out := rrs[:0:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != mdns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

// reply packs a zone answer for a query read by the wire reader.
func (s *Server) reply(req []byte, q wire.Query, r zone.Response, dst []byte, maxSize int) answer {
	m := mdns.Msg{
		MsgHdr: mdns.MsgHdr{
			Id: q.ID, Response: true, Opcode: mdns.OpcodeQuery, Authoritative: r.AuthoritativeAnswer,
			RecursionDesired: q.RD, RecursionAvailable: true, CheckingDisabled: q.CD, Rcode: r.Rcode,
		},
		Compress: true,
		Question: []mdns.Question{{Name: q.Name, Qtype: q.Type, Qclass: q.Class}},
		Answer:   r.Answer,
		Ns:       r.Ns,
		Extra:    r.Extra,
	}
	if q.EDNS {
		m.SetEdns0(maxUDPResponse, q.DO)
	}
	m.Truncate(maxSize)
	out, err := packAppend(&m, dst)
	if err != nil {
		s.log.Debug("pack response", zap.Error(err))
		return s.headerOnly(req, dst, mdns.RcodeServerFailure)
	}
	echoQuestion(out[len(dst):], req, q)
	source := sourceZone
	if r.NotSynced {
		source = sourceError
	}
	return answer{wire: out, rcode: r.Rcode, source: source}
}

// echoQuestion copies the question as the client wrote it over the response's: a client that
// randomises the case of its names (DNS 0x20) checks that the answer spells them the same way.
// The response's question sits at the same offset with the same length, so compression pointers
// into it stay valid.
func echoQuestion(resp, req []byte, q wire.Query) {
	if len(resp) >= q.QuestionEnd {
		copy(resp[12:q.QuestionEnd], req[12:q.QuestionEnd])
	}
}

// formErr answers a malformed request that has at least a header; shorter ones are dropped.
func (s *Server) formErr(req, dst []byte) answer {
	if len(req) < 12 {
		return answer{source: sourceError}
	}
	return s.headerOnly(req, dst, mdns.RcodeFormatError)
}

// headerOnly answers with the request's ID and opcode, the given code and no sections.
func (s *Server) headerOnly(req, dst []byte, rcode int) answer {
	if len(req) < 12 {
		return answer{source: sourceError}
	}
	var h [12]byte
	copy(h[:2], req[:2])
	flags := binary.BigEndian.Uint16(req[2:])
	const qr, opcodeAndRD = 1 << 15, 0x7900
	binary.BigEndian.PutUint16(h[2:], qr|flags&opcodeAndRD|uint16(rcode&0xf))
	return answer{wire: append(dst, h[:]...), rcode: rcode, source: sourceError}
}

// packAppend packs m after the bytes of dst, in dst's spare capacity when it is large enough.
// (miekg/dns's PackBuffer writes from the start of the buffer it is given.)
func packAppend(m *mdns.Msg, dst []byte) ([]byte, error) {
	spare := dst[len(dst):cap(dst)]
	packed, err := m.PackBuffer(spare)
	if err != nil {
		return nil, err
	}
	if len(spare) > 0 && len(packed) > 0 && len(packed) <= len(spare) && &packed[0] == &spare[0] {
		return dst[:len(dst)+len(packed)], nil
	}
	return append(dst, packed...), nil
}

// optLen is the size of an OPT record without options.
const optLen = 11

// appendOPT appends an OPT record advertising maxUDPResponse, with the DO bit as asked, to the
// message that starts at msgStart in b, and counts it in the header's ARCOUNT.
func appendOPT(b []byte, msgStart int, do bool) []byte {
	var flags byte
	if do {
		flags = 0x80
	}
	b = append(b, 0, 0, 41, byte(maxUDPResponse>>8), byte(maxUDPResponse&0xff), 0, 0, flags, 0, 0, 0)
	arcount := binary.BigEndian.Uint16(b[msgStart+10:])
	binary.BigEndian.PutUint16(b[msgStart+10:], arcount+1)
	return b
}

// setRD makes a response's RD flag the query's, as RFC 1035 asks.
func setRD(msg []byte, rd bool) {
	const rdBit = 0x01 // in the third header byte
	if rd {
		msg[2] |= rdBit
	} else {
		msg[2] &^= rdBit
	}
}
