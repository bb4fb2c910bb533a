package listen

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// The keeper protocol. One message is one datagram on a unix SOCK_SEQPACKET socket: a JSON object
// whose first field every version keeps as "version", with the descriptors it carries as
// SCM_RIGHTS. The daemon asks, the keeper answers; the keeper never speaks first.
//
//	{"version":1,"op":"get"}  → {"version":1,"held":[...]} + one descriptor per held endpoint
//	{"version":1,"op":"put"} + descriptors → {"version":1,"held":[...]} (what it now holds)
//	anything it cannot serve  → {"version":1,"error":"..."}
//
// "get" hands over duplicates of everything the keeper holds; the daemon keeps what matches its
// configuration and closes the rest. "put" replaces the whole set: the keeper closes what it held
// and keeps the new descriptors, after checking each is a bound UDP socket or listening TCP
// socket, and describes them from the kernel's answers rather than from what the sender claims.

// protocolVersion is the version this build speaks; a peer speaking another gets an error that
// names both.
const protocolVersion = 1

const (
	opGet = "get"
	opPut = "put"
)

// maxFDs is SCM_MAX_FD, the most descriptors the kernel passes in one message.
const maxFDs = 253

// maxMessage bounds a message's JSON; maxFDs endpoints fit with room to spare.
const maxMessage = 64 << 10

type request struct {
	Version int    `json:"version"`
	Op      string `json:"op"`
}

type reply struct {
	Version int        `json:"version"`
	Held    []endpoint `json:"held,omitempty"`
	Error   string     `json:"error,omitempty"`
}

// endpoint is what one socket is: its protocol and the address it is bound to.
type endpoint struct {
	Network string         `json:"network"` // "udp" or "tcp"
	Addr    netip.AddrPort `json:"addr"`
}

func (e endpoint) String() string { return e.Network + "/" + e.Addr.String() }

func compareEndpoints(a, b endpoint) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return cmp.Compare(a.Network, b.Network)
}

// endpointsString renders sorted endpoints with repeats counted: "udp/169.254.20.10:53×4 ...".
func endpointsString(es []endpoint) string {
	var parts []string
	for i := 0; i < len(es); {
		j := i + 1
		for j < len(es) && es[j] == es[i] {
			j++
		}
		s := es[i].String()
		if j-i > 1 {
			s += fmt.Sprintf("×%d", j-i)
		}
		parts = append(parts, s)
		i = j
	}
	return strings.Join(parts, " ")
}

// describe asks the kernel what socket fd is. Only a bound UDP socket and a listening TCP socket
// of IPv4 or IPv6 are DNS sockets; anything else is an error naming what it is instead.
func describe(fd int) (endpoint, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if errors.Is(err, unix.ENOTSOCK) {
		return endpoint{}, fmt.Errorf("descriptor %d is not a socket", fd)
	}
	if err != nil {
		return endpoint{}, fmt.Errorf("descriptor %d: socket type: %w", fd, err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return endpoint{}, fmt.Errorf("descriptor %d: socket protocol: %w", fd, err)
	}
	var e endpoint
	switch {
	case typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP:
		e.Network = "udp"
	case typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP:
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return endpoint{}, fmt.Errorf("descriptor %d: listening state: %w", fd, err)
		}
		if listening == 0 {
			return endpoint{}, fmt.Errorf("descriptor %d: TCP socket that is not listening", fd)
		}
		e.Network = "tcp"
	default:
		return endpoint{}, fmt.Errorf("descriptor %d: socket of type %d protocol %d, want UDP or TCP", fd, typ, proto)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return endpoint{}, fmt.Errorf("descriptor %d: bound address: %w", fd, err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		e.Addr = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		e.Addr = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	default:
		return endpoint{}, fmt.Errorf("descriptor %d: %s socket of family %T, want IPv4 or IPv6", fd, e.Network, sa)
	}
	if e.Addr.Port() == 0 {
		return endpoint{}, fmt.Errorf("descriptor %d: %s socket not bound to a port", fd, e.Network)
	}
	return e, nil
}

// send writes one message with fds attached.
func send(c *net.UnixConn, msg any, fds []int) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// receive reads one message into msg and returns the descriptors that came with it, which the
// caller then owns, even when err is not nil. io.EOF means the peer closed the connection.
func receive(c *net.UnixConn, msg any) (fds []int, err error) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	if oobn > 0 {
		cmsgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return nil, fmt.Errorf("parse control message: %w", perr)
		}
		for _, m := range cmsgs {
			got, perr := unix.ParseUnixRights(&m)
			if perr != nil {
				continue // not descriptors: credentials or the like, which this protocol ignores
			}
			fds = append(fds, got...)
		}
	}
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		return fds, fmt.Errorf("more than %d descriptors in one message", maxFDs)
	case flags&unix.MSG_TRUNC != 0:
		return fds, fmt.Errorf("message longer than %d bytes", maxMessage)
	case n == 0:
		// A zero-length datagram is what a closed SOCK_SEQPACKET peer reads as.
		return fds, io.EOF
	}
	if err := json.Unmarshal(buf[:n], msg); err != nil {
		return fds, fmt.Errorf("malformed message: %w", err)
	}
	return fds, nil
}

// versionError is the answer to a message of another protocol version.
func versionError(theirs int) string {
	return fmt.Sprintf("protocol version %d not spoken here: this side speaks version %d; run the same nodenet release for the daemon and the dns-keeper", theirs, protocolVersion)
}

func closeAll(fds []int) {
	for _, fd := range fds {
		// Descriptors this process received and will not use: nothing to do if closing fails.
		_ = unix.Close(fd)
	}
}

func sortedEndpoints(es []endpoint) []endpoint {
	return slices.SortedFunc(slices.Values(es), compareEndpoints)
}
