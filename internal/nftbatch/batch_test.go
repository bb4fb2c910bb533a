package nftbatch

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/nodenet/nodenet/internal/nstest"
)

var inet = nftables.TableFamilyINet

func TestSendWritesTheBatch(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	b, err := New()
	if err != nil {
		t.Fatal(err)
	}
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

	// The Batch can be used again, and an empty one sends nothing.
	b.Conn.DelTable(tab)
	if err := b.Send(int(node.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(int(node.Fd())); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	if tables, err := c.ListTables(); err != nil || len(tables) != 0 {
		t.Fatalf("tables after the delete: %v, %v", tables, err)
	}
}

func TestSendRefusalNamesTheMessageAndAppliesNothing(t *testing.T) {
	nstest.RequireRoot(t)
	node := nstest.NewNS(t)
	b, err := New()
	if err != nil {
		t.Fatal(err)
	}
	tab := b.Conn.AddTable(&nftables.Table{Family: inet, Name: "t"})
	b.Conn.AddChain(&nftables.Chain{Table: tab, Name: "c"})
	b.Conn.AddRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Table: tab, Name: "missing"},
		Exprs: []expr.Any{&expr.Counter{}}})
	b.Conn.AddChain(&nftables.Chain{Table: tab, Name: "d"})

	err = b.Send(int(node.Fd()))
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
	b, err := New()
	if err != nil {
		t.Fatal(err)
	}
	tab := b.Conn.AddTable(&nftables.Table{Family: inet, Name: "t"})
	for i := range 8 {
		b.Conn.AddRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Table: tab, Name: fmt.Sprint("missing-", i)},
			Exprs: []expr.Any{&expr.Counter{}}})
	}
	err = b.Send(int(node.Fd()))
	if err == nil || !strings.Contains(err.Error(), "missing-4") || strings.Contains(err.Error(), "missing-5") ||
		!strings.HasSuffix(err.Error(), "and 3 more") {
		t.Fatalf("error %v: want the first %d refusals named and 3 more counted", err, maxReported)
	}
}
