package forward

import (
	"encoding/binary"
	"errors"

	"github.com/nodenet/nodenet/dns/wire"
)

// AppendCached appends to dst the cached response for a query with key k
// and ID id, its TTLs set to what remains of the entry's lifetime, and
// reports true; or reports false, with dst unchanged, when there is no
// fresh entry or it is larger than maxSize. The server then calls Resolve,
// which also handles stale data, refreshes and truncation.
//
// The response has RD set and no OPT record: a server answering an EDNS
// query appends its own OPT (11 bytes without options, so pass maxSize
// less those) and increments ARCOUNT. The question starts at offset 12
// and has the length of the client's own, lower-cased; a server that wants
// the client's spelling copies it over.
//
// It does not allocate once dst has room.
func (f *Forwarder) AppendCached(dst []byte, k wire.Key, id uint16, maxSize int) ([]byte, bool) {
	e := f.cache.get(k)
	if e == nil || len(e.wire) > maxSize {
		return dst, false
	}
	now := f.clock.fast()
	age := now - e.stored
	if !e.fresh(age) {
		return dst, false
	}
	f.m.hits[e.kind].Inc()
	f.notePopular(k, e, now, age)
	return e.appendTo(dst, id, e.remaining(age)), true
}

// Layout of a DNS message (RFC 1035 section 4.1).
const (
	headerLen      = 12
	questionFixed  = 4  // type, class
	rrFixed        = 10 // type, class, ttl, rdlength
	rrTTLOffset    = 4  // from the end of the owner name
	compressionTag = 0xc0
	typeOPT        = 41
)

var errShortMessage = errors.New("message ends inside a record")

// ttlOffsets indexes the TTL field of every record of the packed message b,
// save an OPT record's, whose TTL field holds flags.
func ttlOffsets(b []byte) ([]uint16, error) {
	if len(b) < headerLen {
		return nil, errShortMessage
	}
	qd := int(binary.BigEndian.Uint16(b[4:]))
	rrs := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	off := headerLen
	var err error
	for range qd {
		if off, err = skipName(b, off); err != nil {
			return nil, err
		}
		off += questionFixed
	}
	offsets := make([]uint16, 0, rrs)
	for range rrs {
		if off, err = skipName(b, off); err != nil {
			return nil, err
		}
		if off+rrFixed > len(b) {
			return nil, errShortMessage
		}
		if binary.BigEndian.Uint16(b[off:]) != typeOPT {
			offsets = append(offsets, uint16(off+rrTTLOffset))
		}
		off += rrFixed + int(binary.BigEndian.Uint16(b[off+8:]))
	}
	if off != len(b) {
		return nil, errors.New("message length does not match its records")
	}
	return offsets, nil
}

// skipName returns the offset after the name at off.
func skipName(b []byte, off int) (int, error) {
	for {
		if off >= len(b) {
			return 0, errShortMessage
		}
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&compressionTag == compressionTag:
			return off + 2, nil
		case l&compressionTag != 0:
			return 0, errors.New("unknown label type")
		}
		off += 1 + l
	}
}
