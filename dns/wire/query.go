// Package wire reads what the DNS server needs of a request straight from its wire form: the
// header, the one question and the EDNS0 options. Most queries are then answered without
// unpacking them into a dns.Msg, which is where a Go DNS server spends most of its time.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Header and record layout constants of RFC 1035 and RFC 6891.
const (
	headerLen   = 12
	typeOPT     = 41
	maxNameLen  = 255
	maxLabelLen = 63
	flagQR      = 1 << 15
	flagRD      = 1 << 8
	flagCD      = 1 << 4
	flagDO      = 1 << 15 // in the OPT record's TTL field
	opcodeShift = 11
	opcodeMask  = 0xf

	// MinUDPSize is what a client without EDNS0 can receive over UDP.
	MinUDPSize = 512
)

// ErrNotPlain marks a well-formed request that ParseQuery does not handle on its own (name
// compression or escapes in the question, more than one question, records besides one OPT): the
// server unpacks those in full. Any other error is a malformed request.
var ErrNotPlain = errors.New("not a plain query")

// Query is a parsed request.
type Query struct {
	ID     uint16
	Opcode int
	RD, CD bool
	// Name is the question name lower-cased, in presentation form, fully qualified
	// ("www.example.com."); the root is ".".
	Name        string
	Type, Class uint16
	EDNS        bool   // the request carries an OPT record
	UDPSize     uint16 // the largest UDP response the client takes: MinUDPSize without EDNS0
	DO          bool
	// QuestionEnd is the offset just past the question section in the request.
	QuestionEnd int
}

// Key identifies the answers a query may share with other queries: what a cache is keyed on.
type Key struct {
	Name        string
	Type, Class uint16
	DO, CD      bool
}

// Key returns the query's cache key.
func (q Query) Key() Key { return Key{Name: q.Name, Type: q.Type, Class: q.Class, DO: q.DO, CD: q.CD} }

// ParseQuery reads a request. It allocates only the name, and with names only a name that table
// has not seen; nil names allocates every name.
func ParseQuery(b []byte, names *Names) (Query, error) {
	var q Query
	if len(b) < headerLen {
		return q, fmt.Errorf("request of %d bytes is shorter than a DNS header", len(b))
	}
	q.ID = binary.BigEndian.Uint16(b)
	flags := binary.BigEndian.Uint16(b[2:])
	if flags&flagQR != 0 {
		return q, errors.New("request is a response (QR set)")
	}
	q.Opcode = int(flags>>opcodeShift) & opcodeMask
	q.RD = flags&flagRD != 0
	q.CD = flags&flagCD != 0
	qd, an, ns, ar := binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), binary.BigEndian.Uint16(b[8:]), binary.BigEndian.Uint16(b[10:])
	if qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return q, ErrNotPlain
	}
	name, off, err := readName(b, headerLen, names)
	if err != nil {
		return q, err
	}
	if len(b) < off+4 {
		return q, errors.New("request ends inside the question")
	}
	q.Name = name
	q.Type = binary.BigEndian.Uint16(b[off:])
	q.Class = binary.BigEndian.Uint16(b[off+2:])
	q.QuestionEnd = off + 4
	q.UDPSize = MinUDPSize
	if ar == 1 {
		if err := q.readOPT(b[q.QuestionEnd:]); err != nil {
			return q, err
		}
	} else if len(b) != q.QuestionEnd {
		return q, fmt.Errorf("request has %d bytes after its question", len(b)-q.QuestionEnd)
	}
	return q, nil
}

// readOPT reads the one additional record, which must be an OPT with the root as owner.
func (q *Query) readOPT(rr []byte) error {
	const optFixed = 11 // owner (root, 1 byte) + type + class + ttl + rdlength
	if len(rr) < optFixed || rr[0] != 0 || binary.BigEndian.Uint16(rr[1:]) != typeOPT {
		return ErrNotPlain
	}
	rdlen := int(binary.BigEndian.Uint16(rr[9:]))
	if len(rr) != optFixed+rdlen {
		return errors.New("OPT record length does not match the request")
	}
	q.EDNS = true
	q.UDPSize = max(binary.BigEndian.Uint16(rr[3:]), MinUDPSize)
	q.DO = binary.BigEndian.Uint32(rr[5:])&flagDO != 0
	return nil
}

// readName reads an uncompressed name of plain host-name-like labels at off and returns it
// lower-cased in presentation form with the offset after it. Labels holding bytes that
// presentation form would escape, and compression pointers, give ErrNotPlain. With names, the
// string is that table's.
func readName(b []byte, off int, names *Names) (string, int, error) {
	var buf [maxNameLen + 1]byte
	n := 0
	wireLen := 0
	for {
		if off >= len(b) {
			return "", 0, errors.New("request ends inside the question name")
		}
		l := int(b[off])
		off++
		if l == 0 {
			break
		}
		if l > maxLabelLen {
			return "", 0, ErrNotPlain // a compression pointer or an extended label type
		}
		wireLen += l + 1
		if wireLen+1 > maxNameLen {
			return "", 0, errors.New("question name is longer than 255 bytes")
		}
		if off+l > len(b) {
			return "", 0, errors.New("request ends inside the question name")
		}
		for _, c := range b[off : off+l] {
			switch {
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '*':
			default:
				return "", 0, ErrNotPlain
			}
			buf[n] = c
			n++
		}
		buf[n] = '.'
		n++
		off += l
	}
	if n == 0 {
		return ".", off, nil
	}
	if names != nil {
		return names.intern(buf[:n]), off, nil
	}
	return string(buf[:n]), off, nil
}
