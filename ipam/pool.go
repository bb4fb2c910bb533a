package ipam

import (
	"encoding/binary"
	"math"
	"net/netip"
	"sync/atomic"
)

// pool hands out the addresses of one range in rotation, like CNI
// host-local: the next address is the first free one after the cursor, so a
// released address is not reused until the range has cycled.
//
// Addresses are numbered by their offset from the network address. Offset 0
// (network, or IPv6 subnet-router anycast) and 1 (gateway) are never handed
// out, nor is the last IPv4 offset (broadcast). Offsets are 64 bits wide: an
// IPv6 range with more host bits is used only in its first 2^64 addresses,
// more than any node can fill.
//
// used is guarded by Allocator.mu. cursor is written only under
// Allocator.mu but is atomic because the commit of an allocation reads it
// without the mutex (bbolt runs batched commits on its own goroutine).
type pool struct {
	prefix      netip.Prefix
	is4         bool
	netHi       uint64 // the network address as the two halves of its 16-byte form
	netLo       uint64
	first, last uint64 // offsets that may be handed out, inclusive
	used        uint64 // offsets in [first, last] that are held
	cursor      atomic.Uint64
}

func newPool(prefix netip.Prefix) *pool {
	a := prefix.Addr().As16()
	hostBits := min(prefix.Addr().BitLen()-prefix.Bits(), 64)
	p := &pool{
		prefix: prefix,
		is4:    prefix.Addr().Is4(),
		netHi:  binary.BigEndian.Uint64(a[:8]),
		netLo:  binary.BigEndian.Uint64(a[8:]),
		first:  2,
		last:   math.MaxUint64 >> (64 - hostBits),
	}
	if p.is4 {
		p.last-- // broadcast
	}
	p.cursor.Store(p.first - 1)
	return p
}

// addr returns the address at offset off. The host bits of the network
// address are zero and off fits in them, so the addition never carries.
func (p *pool) addr(off uint64) netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], p.netHi)
	binary.BigEndian.PutUint64(b[8:], p.netLo+off)
	a := netip.AddrFrom16(b)
	if p.is4 {
		return a.Unmap()
	}
	return a
}

// offset returns the offset of a and whether a is one the pool hands out.
func (p *pool) offset(a netip.Addr) (uint64, bool) {
	if a.Is4() != p.is4 || !p.prefix.Contains(a) {
		return 0, false
	}
	b := a.As16()
	if binary.BigEndian.Uint64(b[:8]) != p.netHi {
		return 0, false // beyond the first 2^64 addresses of a huge IPv6 range
	}
	off := binary.BigEndian.Uint64(b[8:]) - p.netLo
	return off, off >= p.first && off <= p.last
}

// holds reports whether a counts towards used.
func (p *pool) holds(a netip.Addr) bool {
	_, ok := p.offset(a)
	return ok
}

func (p *pool) free() uint64 {
	return p.last - p.first + 1 - p.used
}

// gateway is the first host address, with the range's prefix length.
func (p *pool) gateway() netip.Prefix {
	return netip.PrefixFrom(p.addr(1), p.prefix.Bits())
}

// next moves the cursor to the first address after it that is not in held,
// wrapping at the end of the range, and returns that address. The caller
// must have checked free() > 0, which bounds the walk by the number of held
// addresses; in steady state the addresses after the cursor are the ones
// released longest ago and mostly free.
func (p *pool) next(held map[netip.Addr]string) netip.Addr {
	off := p.cursor.Load()
	for {
		if off >= p.last || off < p.first {
			off = p.first
		} else {
			off++
		}
		a := p.addr(off)
		if _, taken := held[a]; !taken {
			p.cursor.Store(off)
			return a
		}
	}
}

// cursorAddr is the address handed out last (the gateway before the first).
func (p *pool) cursorAddr() netip.Addr {
	return p.addr(p.cursor.Load())
}

// restoreCursor moves the cursor to a persisted address if it is one the
// pool hands out; anything else (a range that changed) starts from the top.
func (p *pool) restoreCursor(a netip.Addr) {
	if off, ok := p.offset(a); ok {
		p.cursor.Store(off)
	}
}
