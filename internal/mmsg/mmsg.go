// Package mmsg moves batches of UDP datagrams with one recvmmsg or sendmmsg system call each,
// through the sockets' own poller (syscall.RawConn), without allocating per datagram or per
// call. golang.org/x/net's batch calls allocate an address for every datagram read, which at
// a hundred thousand queries a second kept the collector running several times a second.
package mmsg

import (
	"errors"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// header is struct mmsghdr of <sys/socket.h>: Go pads the struct to the msghdr's alignment as
// C does.
type header struct {
	hdr unix.Msghdr
	len uint32
}

// sockaddrLen is room for an IPv4 or an IPv6 peer address.
const sockaddrLen = unix.SizeofSockaddrInet6

// batch is the memory one call hands the kernel, allocated once: headers, their one buffer each
// and their peers' addresses.
type batch struct {
	hdrs  []header
	iovs  []unix.Iovec
	addrs []unix.RawSockaddrInet6
}

func newBatch(n int) batch {
	b := batch{
		hdrs:  make([]header, n),
		iovs:  make([]unix.Iovec, n),
		addrs: make([]unix.RawSockaddrInet6, n),
	}
	for i := range b.hdrs {
		b.hdrs[i].hdr.Iov = &b.iovs[i]
		b.hdrs[i].hdr.SetIovlen(1)
		b.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
	}
	return b
}

// Reader reads up to its size of datagrams a call.
type Reader struct {
	batch
	bufs   [][]byte
	recvFn func(fd uintptr) bool // r.recv, bound once: a method value allocates
	n      int
	errno  syscall.Errno
}

// NewReader returns a Reader of n datagrams of up to size bytes each.
func NewReader(n, size int) *Reader {
	r := &Reader{batch: newBatch(n), bufs: make([][]byte, n)}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, size)
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(size)
	}
	r.recvFn = r.recv
	return r
}

// Read waits until at least one datagram is queued on rc and reads as many as are queued, up to
// the Reader's size; it returns how many. The previous Read's datagrams are overwritten. Its
// errors are rc's (a closed socket, a deadline) and recvmmsg's.
func (r *Reader) Read(rc syscall.RawConn) (int, error) {
	for i := range r.hdrs {
		r.hdrs[i].hdr.Namelen = sockaddrLen // the kernel writes each peer's length here
	}
	r.n, r.errno = 0, 0
	if err := rc.Read(r.recvFn); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	return r.n, nil
}

func (r *Reader) recv(fd uintptr) bool {
	n, errno, again := call(unix.SYS_RECVMMSG, fd, r.hdrs)
	if again {
		return false // wait until the socket is readable
	}
	r.n, r.errno = n, errno
	return true
}

// Payload is datagram i of the last Read. A datagram longer than the buffer is cut short.
func (r *Reader) Payload(i int) []byte {
	return r.bufs[i][:r.hdrs[i].len]
}

// Peer is the sender of datagram i; not valid for a family other than IPv4 and IPv6.
func (r *Reader) Peer(i int) netip.AddrPort {
	a := &r.addrs[i]
	p := (*[2]byte)(unsafe.Pointer(&a.Port)) // network byte order
	port := uint16(p[0])<<8 | uint16(p[1])
	switch a.Family {
	case unix.AF_INET:
		v4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(a))
		return netip.AddrPortFrom(netip.AddrFrom4(v4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), port)
	}
	return netip.AddrPort{}
}

// Writer sends up to its size of datagrams a call.
type Writer struct {
	batch
	sendFn func(fd uintptr) bool // w.send, bound once
	queued int
	off    int // first message of the current call
	sent   int
	errno  syscall.Errno
}

// NewWriter returns a Writer of n datagrams.
func NewWriter(n int) *Writer {
	w := &Writer{batch: newBatch(n)}
	w.sendFn = w.send
	return w
}

// Reply queues payload for the sender of datagram i of r. payload must stay unchanged until
// Flush, and a Writer holds at most its size between Flushes (more panics).
func (w *Writer) Reply(payload []byte, r *Reader, i int) {
	j := w.queued
	w.addrs[j] = r.addrs[i]
	w.hdrs[j].hdr.Namelen = r.hdrs[i].hdr.Namelen
	w.iovs[j].Base = unsafe.SliceData(payload)
	w.iovs[j].SetLen(len(payload))
	w.queued++
}

// Flush sends every queued datagram and empties the Writer. A datagram the kernel refuses
// (an unreachable or filtered peer) is skipped so that the others still go; the first such
// error is returned, joined with any error of rc (a closed socket), which ends the flush.
func (w *Writer) Flush(rc syscall.RawConn) error {
	var refused error
	for w.off = 0; w.off < w.queued; {
		w.sent, w.errno = 0, 0
		if err := rc.Write(w.sendFn); err != nil {
			refused = errors.Join(refused, err)
			break
		}
		if w.errno != 0 {
			if refused == nil {
				refused = w.errno
			}
			w.off++ // sendmmsg fails only for the first datagram it tried
			continue
		}
		w.off += w.sent
	}
	for i := range w.queued {
		w.iovs[i].Base = nil // drop the references to the payloads
	}
	w.queued = 0
	return refused
}

func (w *Writer) send(fd uintptr) bool {
	n, errno, again := call(unix.SYS_SENDMMSG, fd, w.hdrs[w.off:w.queued])
	if again {
		return false // wait until the socket is writable
	}
	w.sent, w.errno = n, errno
	return true
}

// call makes one recvmmsg or sendmmsg (trap) over hdrs without blocking, again when interrupted;
// again is true when the socket has nothing to read or no room to write.
func call(trap, fd uintptr, hdrs []header) (n int, errno syscall.Errno, again bool) {
	for {
		r, _, errno := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, 0, true
		}
		return int(r), errno, false
	}
}
