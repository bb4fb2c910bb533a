package forward

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/nodenet/nodenet/dns/wire"
)

// udpReadSize is the largest UDP answer read: we advertise 1232, and a
// server that ignores that gets some slack before its answer is dropped.
const udpReadSize = 4096

var udpBuffers = sync.Pool{New: func() any { return new([udpReadSize]byte) }}

// errMalformed marks an answer over TCP that does not parse or does not
// match the query: on a connected stream that is a broken server, not noise.
var errMalformed = errors.New("malformed answer")

// exchange asks u one question: over UDP, and again over TCP when the UDP
// answer is truncated. Each attempt has its own socket and a
// crypto-random ID.
func (u *upstream) exchange(ctx context.Context, k wire.Key) (*dns.Msg, error) {
	start := time.Now()
	resp, err := exchangeUDP(ctx, u.addr.String(), newQuery(k), u.m)
	if err == nil && resp.Truncated {
		resp, err = exchangeTCP(ctx, u.addr.String(), newQuery(k))
	}
	u.m.duration.Observe(time.Since(start).Seconds())
	switch {
	case err != nil:
		u.m.failure(failureReason(err))
		return nil, fmt.Errorf("ask %s: %w", u.addr, err)
	case resp.Rcode > 0xf:
		// An extended RCODE (BADVERS, BADCOOKIE) is about our exchange,
		// not the name, and cannot be passed on without the OPT it lives in.
		u.m.failure(reasonRcode)
		return nil, fmt.Errorf("ask %s: extended RCODE %s", u.addr, rcodeText(resp.Rcode))
	}
	u.m.response(resp.Rcode)
	return resp, nil
}

func failureReason(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return reasonTimeout
	case errors.Is(err, errMalformed):
		return reasonMalformed
	}
	return reasonNetwork
}

// newQuery is the upstream query for k: recursion desired, EDNS0 with our
// buffer size, DO and CD as the client asked, and a fresh crypto-random ID.
func newQuery(k wire.Key) *dns.Msg {
	q := new(dns.Msg)
	var id [2]byte
	rand.Read(id[:]) // never fails (crypto/rand since Go 1.24)
	q.Id = binary.BigEndian.Uint16(id[:])
	q.RecursionDesired = true
	q.CheckingDisabled = k.CD
	q.Question = []dns.Question{{Name: k.Name, Qtype: k.Type, Qclass: k.Class}}
	q.SetEdns0(advertisedUDPSize, k.DO)
	return q
}

// exchangeUDP sends q from a new connected UDP socket. Binding no port
// lets the kernel choose a random ephemeral one for every exchange, so an
// off-path attacker has to guess 16 bits of port besides 16 bits of ID; the
// connected socket receives only datagrams from the address asked. Datagrams
// that do not parse or do not answer q (ID, question) are counted and
// ignored: the genuine answer may still follow.
func exchangeUDP(ctx context.Context, addr string, q *dns.Msg, m upstreamMetrics) (*dns.Msg, error) {
	out, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer closeOnDone(ctx, conn)()
	if _, err := conn.Write(out); err != nil {
		return nil, err
	}
	buf := udpBuffers.Get().(*[udpReadSize]byte)
	defer udpBuffers.Put(buf)
	for {
		n, err := conn.Read(buf[:])
		if err != nil {
			return nil, err
		}
		r := new(dns.Msg)
		err = r.Unpack(buf[:n])
		if !answers(q, r) || (err != nil && !r.Truncated) {
			// A truncated answer may end inside a record; its header and
			// question are enough to go on over TCP.
			m.mismatched.Inc()
			continue
		}
		return r, nil
	}
}

// exchangeTCP sends q over a new TCP connection, for answers too large
// for UDP.
func exchangeTCP(ctx context.Context, addr string, q *dns.Msg) (*dns.Msg, error) {
	out, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer closeOnDone(ctx, conn)()
	framed := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(out)), uint16(len(out)))
	if _, err := conn.Write(append(framed, out...)); err != nil {
		return nil, err
	}
	var size [2]byte
	if _, err := io.ReadFull(conn, size[:]); err != nil {
		return nil, err
	}
	in := make([]byte, binary.BigEndian.Uint16(size[:]))
	if _, err := io.ReadFull(conn, in); err != nil {
		return nil, err
	}
	r := new(dns.Msg)
	if err := r.Unpack(in); err != nil {
		return nil, fmt.Errorf("%w over TCP: %w", errMalformed, err)
	}
	if !answers(q, r) {
		return nil, fmt.Errorf("%w over TCP: ID or question does not match the query", errMalformed)
	}
	return r, nil
}

// closeOnDone bounds conn's reads and writes by ctx: its deadline, and its
// cancellation when Run stops. The returned function releases the watch.
func closeOnDone(ctx context.Context, conn net.Conn) func() bool {
	if dl, ok := ctx.Deadline(); ok {
		// The error is that of a closed conn, which the read after it reports.
		_ = conn.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
}

// answers says whether r is the response to q: same ID and opcode, and
// the same question, the name compared case-insensitively.
func answers(q, r *dns.Msg) bool {
	if r.Id != q.Id || !r.Response || r.Opcode != q.Opcode || len(r.Question) != 1 {
		return false
	}
	a, b := q.Question[0], r.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && equalFoldASCII(a.Name, b.Name)
}

// equalFoldASCII compares names as DNS does: only ASCII letters fold.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
