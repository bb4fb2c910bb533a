// Package nftbatch sends an nftables transaction built with google/nftables
// as one netlink batch, without asking the kernel to acknowledge every
// message or to echo every rule back.
//
// google/nftables v0.3 sets NLM_F_ACK on each message and NLM_F_ECHO on each
// rule, then reads the answers one receive call at a time. At a cold start of
// 1,000 Services that reading was a quarter of the sync's time, and the
// echoes are of no use here: nodenet never addresses a rule by its handle
// (a chain is rewritten by flushing it). The kernel processes a batch
// synchronously inside sendmsg and reports every failed message whether or
// not it was asked to acknowledge it, so one acknowledgement, for the last
// message, is enough to know the batch was read to its end.
package nftbatch

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Batch collects one transaction. Queue its operations on Conn, then Send,
// once: google/nftables keeps a marshalling error on its Conn for good.
type Batch struct {
	// Conn marshals the operations. It never opens a socket: its Flush
	// hands the marshalled messages to the Batch.
	Conn     *nftables.Conn
	msgs     []netlink.Message
	sent     bool
	userData func(SetInfo) []byte
}

// SetInfo is what the creation of a set says about it.
type SetInfo struct {
	Table, Name     string
	Flags           uint32 // NFT_SET_*
	KeyType, KeyLen uint32
}

// SetUserData makes Send give each set the batch creates the user data (NFTA_SET_USERDATA) f
// returns for it; nil leaves what google/nftables wrote. The kernel keeps user data without
// reading it; nft reads it to print a set's keys and to parse them back. google/nftables writes
// only a key byte order, big-endian for every anonymous set, and nothing of the typeof form nft
// needs for a key part that is a plain integer.
func (b *Batch) SetUserData(f func(SetInfo) []byte) { b.userData = f }

// New returns an empty Batch.
func New() (*Batch, error) {
	b := &Batch{}
	c, err := nftables.New(nftables.WithTestDial(b.capture))
	if err != nil {
		return nil, fmt.Errorf("nft batch: %w", err)
	}
	b.Conn = c
	return b, nil
}

// capture stands in for the netlink socket under Conn. Flush sends the whole
// batch in one call, then waits for an answer to each message; there are
// none to wait for (io.EOF tells the test socket so).
func (b *Batch) capture(req []netlink.Message) ([]netlink.Message, error) {
	if req == nil {
		return nil, io.EOF
	}
	b.msgs = append(b.msgs, req...)
	return nil, nil
}

// socketBuffer is what the socket may hold each way. A batch goes out in one
// sendmsg: the default (about 200 KiB) holds a few hundred rules, and a
// split cold start sends batches of a few MiB. A refused batch answers with
// an error per refused message, each charged about a KiB: a few hundred
// would overflow the default. Memory is taken only as used; raising the limit
// past the sysctl maximum needs CAP_NET_ADMIN, which a writer of nftables has.
const socketBuffer = 64 << 20

// Send writes the batch into the network namespace open as netnsFD (0: the
// calling thread's). The kernel applies all of it or none; the error names
// every message it refused and why.
func (b *Batch) Send(netnsFD int) error {
	if b.sent {
		return errors.New("nft batch: sent twice")
	}
	b.sent = true
	if err := b.Conn.Flush(); err != nil {
		return err // a marshalling error: nothing was sent
	}
	if len(b.msgs) == 0 {
		return nil
	}
	msgs := b.msgs
	if len(msgs) < 3 || msgs[0].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) ||
		msgs[len(msgs)-1].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
		return fmt.Errorf("nft batch: google/nftables flushed %d messages that are not one batch", len(msgs))
	}
	for i := range msgs {
		h := &msgs[i].Header
		h.Flags &^= netlink.Acknowledge | netlink.Echo
		h.Sequence, h.PID = 0, 0 // numbered by the real socket
		if b.userData != nil && h.Type == netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSET) {
			data, err := withUserData(msgs[i].Data, b.userData)
			if err != nil {
				return fmt.Errorf("nft batch: %w", err)
			}
			msgs[i].Data = data
			h.Length = 0 // the socket sets it from the new data; the old one would cut it short
		}
	}
	msgs[len(msgs)-2].Header.Flags |= netlink.Acknowledge

	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return fmt.Errorf("nft batch: open netlink socket: %w", err)
	}
	defer conn.Close()
	if err := forceBuffers(conn, unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE); err != nil {
		return err
	}
	// Answers carry only the header of the refused message, not all of it.
	if err := conn.SetOption(netlink.CapAcknowledge, true); err != nil {
		return fmt.Errorf("nft batch: %w", err)
	}
	sent, err := conn.SendMessages(msgs)
	if err != nil {
		return fmt.Errorf("nft batch: send %d messages: %w", len(msgs)-2, err)
	}
	answers, overflowed, err := drain(conn)
	if err != nil {
		return fmt.Errorf("nft batch: read the kernel's answers: %w", err)
	}
	return verdict(sent, answers, overflowed)
}

// LargeReceiveBuffer raises a reading socket's receive buffer to socketBuffer, as a
// google/nftables SockOption: a dump of a table with thousands of Services is several MiB, and
// the kernel stops filling the socket at the default until it is read.
func LargeReceiveBuffer(c *netlink.Conn) error {
	return forceBuffers(c, unix.SO_RCVBUFFORCE)
}

func forceBuffers(c *netlink.Conn, opts ...int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("nft batch: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for _, opt := range opts {
			serr = cmp.Or(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, socketBuffer))
		}
	}); err != nil {
		return fmt.Errorf("nft batch: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("nft batch: set socket buffers: %w", serr)
	}
	return nil
}

// drain reads what the kernel queued while it processed the batch. Netlink
// delivers to the kernel in the sender's context, so by the time sendmsg
// returned every answer is on the socket: reading stops at the first empty
// read instead of waiting. overflowed says the socket dropped answers (it
// reports that once, with ENOBUFS, and the answers queued before are still
// read).
func drain(c *netlink.Conn) (answers []syscall.NetlinkMessage, overflowed bool, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, false, err
	}
	buf := make([]byte, 64<<10)
	for {
		var n int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return true
		}); err != nil {
			return nil, false, err
		}
		switch {
		case errors.Is(rerr, unix.EAGAIN):
			return answers, overflowed, nil
		case errors.Is(rerr, unix.ENOBUFS):
			overflowed = true
			continue
		case rerr != nil:
			return nil, false, rerr
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, false, err
		}
		for _, m := range msgs {
			m.Data = append([]byte(nil), m.Data...) // buf is reused
			answers = append(answers, m)
		}
	}
}

// maxReported bounds the refusals an error spells out; a batch refused
// for one cause tends to be refused for it many times.
const maxReported = 5

// verdict reads the kernel's answers to the batch sent: nil only when the
// last message was acknowledged and nothing was refused. Answers lost to an
// overflow were refusals: a batch the kernel takes has one answer.
func verdict(sent []netlink.Message, answers []syscall.NetlinkMessage, overflowed bool) error {
	bySeq := make(map[uint32]int, len(sent))
	for i, m := range sent {
		bySeq[m.Header.Sequence] = i
	}
	last := sent[len(sent)-2].Header.Sequence
	acked := false
	var refused []string
	for _, a := range answers {
		if a.Header.Type != unix.NLMSG_ERROR || len(a.Data) < 4 {
			continue
		}
		errno := -int32(binary.NativeEndian.Uint32(a.Data))
		if errno == 0 {
			acked = acked || a.Header.Seq == last
			continue
		}
		what := "the batch"
		if i, ok := bySeq[a.Header.Seq]; ok && i > 0 && i < len(sent)-1 {
			what = fmt.Sprintf("message %d of %d (%s)", i, len(sent)-2, describe(sent[i]))
		}
		refused = append(refused, what+": "+unix.Errno(errno).Error())
	}
	if overflowed {
		refused = append(refused, "more answers lost (socket buffer full)")
	}
	switch {
	case len(refused) > maxReported:
		return fmt.Errorf("nftables refused %s; and %d more", strings.Join(refused[:maxReported], "; "), len(refused)-maxReported)
	case len(refused) > 0:
		return fmt.Errorf("nftables refused %s", strings.Join(refused, "; "))
	case !acked:
		return fmt.Errorf("nftables did not acknowledge the batch's last message (%s)", describe(sent[len(sent)-2]))
	}
	return nil
}

// describe names a batch message's operation and object, as "add rule
// nodenet-svc-03 service-ABC…".
func describe(m netlink.Message) string {
	typ := uint16(m.Header.Type) & 0xff
	op, ok := operations[typ]
	if !ok {
		return fmt.Sprintf("operation %d", typ)
	}
	if len(m.Data) < 4 {
		return op.verb
	}
	attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
	if err != nil {
		return op.verb
	}
	named := []uint16{1} // NFTA_*_TABLE, and NFTA_TABLE_NAME of a table message
	if op.name != 0 {
		named = append(named, op.name)
	}
	words := []string{op.verb}
	for _, want := range named {
		for _, at := range attrs {
			if at.Type&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == want {
				words = append(words, strings.TrimRight(string(at.Data), "\x00"))
			}
		}
	}
	return strings.Join(words, " ")
}

// operations names the messages a batch holds, with the attribute naming
// the object inside the table (0: the table itself).
var operations = map[uint16]struct {
	verb string
	name uint16
}{
	unix.NFT_MSG_NEWTABLE:   {"add table", 0},
	unix.NFT_MSG_DELTABLE:   {"delete table", 0},
	unix.NFT_MSG_NEWCHAIN:   {"add chain", unix.NFTA_CHAIN_NAME},
	unix.NFT_MSG_DELCHAIN:   {"delete chain", unix.NFTA_CHAIN_NAME},
	unix.NFT_MSG_NEWRULE:    {"add rule", unix.NFTA_RULE_CHAIN},
	unix.NFT_MSG_DELRULE:    {"delete rules of", unix.NFTA_RULE_CHAIN},
	unix.NFT_MSG_NEWSET:     {"add set", unix.NFTA_SET_NAME},
	unix.NFT_MSG_DELSET:     {"delete set", unix.NFTA_SET_NAME},
	unix.NFT_MSG_NEWSETELEM: {"add elements to", unix.NFTA_SET_ELEM_LIST_SET},
	unix.NFT_MSG_DELSETELEM: {"delete elements of", unix.NFTA_SET_ELEM_LIST_SET},
}

// withUserData rewrites a NEWSET message's attributes (after its nfgenmsg header) with the user
// data f returns for the set.
func withUserData(data []byte, f func(SetInfo) []byte) ([]byte, error) {
	const nfgenmsgLen = 4
	if len(data) < nfgenmsgLen {
		return nil, fmt.Errorf("a set's creation of %d bytes", len(data))
	}
	attrs, err := netlink.UnmarshalAttributes(data[nfgenmsgLen:])
	if err != nil {
		return nil, fmt.Errorf("decode a set's creation: %w", err)
	}
	var info SetInfo
	for _, a := range attrs {
		switch a.Type &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case unix.NFTA_SET_TABLE:
			info.Table = strings.TrimRight(string(a.Data), "\x00")
		case unix.NFTA_SET_NAME:
			info.Name = strings.TrimRight(string(a.Data), "\x00")
		case unix.NFTA_SET_FLAGS:
			info.Flags = be32(a.Data)
		case unix.NFTA_SET_KEY_TYPE:
			info.KeyType = be32(a.Data)
		case unix.NFTA_SET_KEY_LEN:
			info.KeyLen = be32(a.Data)
		}
	}
	udata := f(info)
	if udata == nil {
		return data, nil
	}
	attrs = slices.DeleteFunc(attrs, func(a netlink.Attribute) bool { return a.Type == unix.NFTA_SET_USERDATA })
	attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_USERDATA, Data: udata})
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, fmt.Errorf("encode set %s: %w", info.Name, err)
	}
	return append(slices.Clip(data[:nfgenmsgLen]), b...), nil
}

func be32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}
