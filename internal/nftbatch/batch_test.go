package nftbatch

import (
	"encoding/binary"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nstest"
)

var inet = nftables.TableFamilyINet

func newBatch(t *testing.T) *Batch {
	t.Helper()
	b, err := New()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSendWritesTheBatch(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	b := newBatch(t)
	tab := b.Conn.AddTable(&nftables.Table{Family: inet, Name: "t"})
	ch := b.Conn.AddChain(&nftables.Chain{Table: tab, Name: "c"})
	b.Conn.AddRule(&nftables.Rule{Table: tab, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
	// Far more than the default socket buffer holds in one sendmsg.
	set := &nftables.Set{Table: tab, Name: "s", KeyType: nftables.TypeInetService}
	var elems []nftables.SetElement
	for p := range 20000 {
		elems = append(elems, nftables.SetElement{Key: []byte{byte(p >> 8), byte(p)}})
	}
	if err := b.Conn.AddSet(set, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(elems); i += 500 {
		if err := b.Conn.SetAddElements(set, elems[i:i+500]); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(int(node.Fd())); err != nil {
		t.Fatal(err)
	}

	c := nstest.NFTConn(t, node)
	rules, err := c.GetRules(tab, ch)
	if err != nil || len(rules) != 1 {
		t.Fatalf("rules of t/c: %d, %v; want 1", len(rules), err)
	}
	got, err := c.GetSetElements(set)
	if err != nil || len(got) != len(elems) {
		t.Fatalf("elements of t/s: %d, %v; want %d", len(got), err, len(elems))
	}

	if err := b.Send(int(node.Fd())); err == nil {
		t.Fatal("a batch was sent twice")
	}
	b = newBatch(t)
	if err := b.Send(int(node.Fd())); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	b = newBatch(t)
	b.Conn.DelTable(tab)
	if err := b.Send(int(node.Fd())); err != nil {
		t.Fatal(err)
	}
	if tables, err := c.ListTables(); err != nil || len(tables) != 0 {
		t.Fatalf("tables after the delete: %v, %v", tables, err)
	}
}

func TestSendRefusalNamesTheMessageAndAppliesNothing(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	b := newBatch(t)
	tab := b.Conn.AddTable(&nftables.Table{Family: inet, Name: "t"})
	b.Conn.AddChain(&nftables.Chain{Table: tab, Name: "c"})
	b.Conn.AddRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Table: tab, Name: "missing"},
		Exprs: []expr.Any{&expr.Counter{}}})
	b.Conn.AddChain(&nftables.Chain{Table: tab, Name: "d"})

	err := b.Send(int(node.Fd()))
	if err == nil {
		t.Fatal("a rule in a missing chain was accepted")
	}
	t.Logf("refused as: %v", err)
	for _, want := range []string{"message 3 of 4", "add rule t missing", "no such file or directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if tables, lerr := nstest.NFTConn(t, node).ListTables(); lerr != nil || len(tables) != 0 {
		t.Fatalf("a refused batch left tables %v (%v)", tables, lerr)
	}
}

func TestSendReportsAFewOfManyRefusals(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	b := newBatch(t)
	tab := b.Conn.AddTable(&nftables.Table{Family: inet, Name: "t"})
	// Enough refusals to overflow a socket's default receive buffer.
	for i := range 2000 {
		b.Conn.AddRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Table: tab, Name: fmt.Sprint("missing-", i)},
			Exprs: []expr.Any{&expr.Counter{}}})
	}
	err := b.Send(int(node.Fd()))
	if err == nil || !strings.Contains(err.Error(), "missing-4") || strings.Contains(err.Error(), "missing-5") ||
		!strings.HasSuffix(err.Error(), "and 1995 more") {
		t.Fatalf("error %v: want the first %d refusals named and 1995 more counted", err, maxReported)
	}
}

// answer is an NLMSG_ERROR answer to sequence number seq, as the kernel
// writes it with NETLINK_CAP_ACK: the errno and the request's header.
func answer(seq uint32, errno syscall.Errno) syscall.NetlinkMessage {
	data := binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
	data = append(data, make([]byte, unix.NLMSG_HDRLEN)...)
	return syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: unix.NLMSG_ERROR, Seq: seq, Flags: 0x100}, Data: data}
}

func TestVerdictReadsTheAnswers(t *testing.T) {
	sent := []netlink.Message{
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Sequence: 7}},
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE), Sequence: 8},
			Data: append([]byte{unix.NFPROTO_INET, 0, 0, 0}, attribute(1, "t\x00")...)},
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Sequence: 9}},
	}
	for _, tc := range []struct {
		name    string
		answers []syscall.NetlinkMessage
		want    string // "" for success
	}{
		{"acknowledged", []syscall.NetlinkMessage{answer(8, 0)}, ""},
		{"nothing came back", nil, "did not acknowledge the batch's last message (add table t)"},
		{"the commit failed", []syscall.NetlinkMessage{answer(7, unix.ENOMEM), answer(8, 0)}, "refused the batch: cannot allocate memory"},
		{"the message was refused", []syscall.NetlinkMessage{answer(8, unix.EEXIST)}, "message 1 of 1 (add table t): file exists"},
		{"answers were lost", nil, "more answers lost (socket buffer full)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verdict(sent, tc.answers, tc.name == "answers were lost")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("verdict: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("verdict: %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func attribute(typ uint16, value string) []byte {
	b, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: typ, Data: []byte(value)}})
	if err != nil {
		panic(err)
	}
	return b
}

// SetUserData replaces the user data of the sets it returns some for, whatever their place in the
// batch, and leaves the others as google/nftables wrote them.
func TestSendGivesSetsTheirUserData(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	b := newBatch(t)
	tab := b.Conn.AddTable(&nftables.Table{Family: inet, Name: "t"})
	for _, s := range []*nftables.Set{
		{Table: tab, Name: "mine", KeyType: nftables.TypeInteger, Comment: "replaced"},
		{Table: tab, Name: "theirs", KeyType: nftables.TypeInteger, Comment: "kept"},
	} {
		if err := b.Conn.AddSet(s, nil); err != nil {
			t.Fatal(err)
		}
	}
	var seen []SetInfo
	// A key byte order and a comment, longer than what google/nftables wrote: the message grows.
	long := strings.Repeat("x", 100)
	mine := append([]byte{0, 4, 1, 0, 0, 0, 7, byte(len(long) + 1)}, long+"\x00"...)
	b.SetUserData(func(s SetInfo) []byte {
		seen = append(seen, s)
		if s.Name == "mine" {
			return mine
		}
		return nil
	})
	if err := b.Send(int(node.Fd())); err != nil {
		t.Fatal(err)
	}
	want := []SetInfo{{Table: "t", Name: "mine", KeyType: 4, KeyLen: 4}, {Table: "t", Name: "theirs", KeyType: 4, KeyLen: 4}}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("SetUserData was asked about %+v, want %+v", seen, want)
	}
	got := userData(t, node)
	if string(got["mine"]) != string(mine) {
		t.Errorf("mine: user data % x, want % x", got["mine"], mine)
	}
	if !strings.Contains(string(got["theirs"]), "kept") {
		t.Errorf("theirs: user data % x lost google/nftables' comment", got["theirs"])
	}
}

// userData dumps the inet sets of the namespace and returns each one's user data by name.
func userData(t *testing.T, node interface{ Fd() uintptr }) map[string][]byte {
	t.Helper()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(node.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSET), Flags: netlink.Request | netlink.Dump},
		Data:   []byte{unix.NFPROTO_INET, 0, 0, 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, m := range msgs {
		attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			t.Fatal(err)
		}
		var name string
		var udata []byte
		for _, a := range attrs {
			switch a.Type {
			case unix.NFTA_SET_NAME:
				name = strings.TrimRight(string(a.Data), "\x00")
			case unix.NFTA_SET_USERDATA:
				udata = a.Data
			}
		}
		out[name] = udata
	}
	return out
}
