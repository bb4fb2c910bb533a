package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap/zaptest"
)

// addrs returns n consecutive addresses from start, with prefix length bits.
func addrs(start string, n, bits int) []string {
	a := netip.MustParseAddr(start)
	out := make([]string, n)
	for i := range out {
		out[i] = netip.PrefixFrom(a, bits).String()
		a = a.Next()
	}
	return out
}

func TestReservedAddressesSkipped(t *testing.T) {
	tests := []struct {
		name  string
		rng   string
		limit int      // allocations to try
		want  []string // addresses handed out, in order
	}{
		{name: "ipv4 /24", rng: "10.0.0.0/24", limit: 254, want: addrs("10.0.0.2", 253, 24)},
		{name: "ipv4 /29", rng: "10.0.0.0/29", limit: 6, want: addrs("10.0.0.2", 5, 29)},
		{name: "ipv4 /30", rng: "10.0.0.0/30", limit: 2, want: addrs("10.0.0.2", 1, 30)},
		{name: "ipv6 /120", rng: "fd00::/120", limit: 255, want: addrs("fd00::2", 254, 120)},
		{name: "ipv6 /64", rng: "fd00:1:2:3::/64", limit: 5, want: addrs("fd00:1:2:3::2", 5, 64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := open(t, t.TempDir(), tt.rng)
			var got []string
			for i := range tt.limit {
				al, err := a.Allocate(Request{ContainerID: fmt.Sprint(i), IfName: "eth0"})
				if _, ok := errors.AsType[*ExhaustedError](err); ok {
					break
				}
				if err != nil {
					t.Fatalf("Allocate %d: %v", i, err)
				}
				got = append(got, ipsString(al.IPs))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		})
	}
}

// step is one call in a scenario; its outcome is rendered as one line of the
// transcript.
type step struct {
	op          string // alloc, release or get
	cid, ifName string
}

func alloc(cid string) step   { return step{op: "alloc", cid: cid, ifName: "eth0"} }
func release(cid string) step { return step{op: "release", cid: cid, ifName: "eth0"} }
func get(cid string) step     { return step{op: "get", cid: cid, ifName: "eth0"} }

func run(a *Allocator, s step) string {
	var out string
	switch s.op {
	case "alloc":
		al, err := a.Allocate(Request{ContainerID: s.cid, IfName: s.ifName, Netns: "/var/run/netns/" + s.cid})
		out = ipsString(al.IPs)
		if err != nil {
			out = "error: " + strings.ReplaceAll(err.Error(), "\n", "; ")
		}
	case "release", "get":
		var al Allocation
		var ok bool
		var err error
		if s.op == "release" {
			al, ok, err = a.Release(s.cid, s.ifName)
		} else {
			al, ok = a.Get(s.cid, s.ifName)
		}
		out = fmt.Sprintf("%v %s", ok, ipsString(al.IPs))
		if err != nil {
			out = "error: " + err.Error()
		}
	}
	return strings.TrimSpace(fmt.Sprintf("%s %s/%s -> %s", s.op, s.cid, s.ifName, out))
}

func TestScenarios(t *testing.T) {
	tests := []struct {
		name   string
		ranges []string
		steps  []step
		want   string
	}{
		{
			name:   "rotation does not reuse a released address until the range wraps",
			ranges: []string{"10.0.0.0/29"},
			steps: []step{
				alloc("a"), release("a"), alloc("b"), release("b"),
				alloc("c"), alloc("d"), alloc("e"), alloc("f"), alloc("g"), alloc("h"),
			},
			want: `
alloc a/eth0 -> 10.0.0.2/29
release a/eth0 -> true 10.0.0.2/29
alloc b/eth0 -> 10.0.0.3/29
release b/eth0 -> true 10.0.0.3/29
alloc c/eth0 -> 10.0.0.4/29
alloc d/eth0 -> 10.0.0.5/29
alloc e/eth0 -> 10.0.0.6/29
alloc f/eth0 -> 10.0.0.2/29
alloc g/eth0 -> 10.0.0.3/29
alloc h/eth0 -> error: no free address in range 10.0.0.0/29`,
		},
		{
			name:   "wrap skips held addresses",
			ranges: []string{"10.0.0.0/29"},
			steps: []step{
				alloc("a"), alloc("b"), alloc("c"), alloc("d"), alloc("e"),
				release("c"), alloc("f"), release("b"), alloc("g"),
			},
			want: `
alloc a/eth0 -> 10.0.0.2/29
alloc b/eth0 -> 10.0.0.3/29
alloc c/eth0 -> 10.0.0.4/29
alloc d/eth0 -> 10.0.0.5/29
alloc e/eth0 -> 10.0.0.6/29
release c/eth0 -> true 10.0.0.4/29
alloc f/eth0 -> 10.0.0.4/29
release b/eth0 -> true 10.0.0.3/29
alloc g/eth0 -> 10.0.0.3/29`,
		},
		{
			name:   "allocate is idempotent per container and interface",
			ranges: []string{"10.0.0.0/24"},
			steps: []step{
				alloc("a"), alloc("a"), {op: "alloc", cid: "a", ifName: "net1"}, alloc("b"), alloc("a"),
			},
			want: `
alloc a/eth0 -> 10.0.0.2/24
alloc a/eth0 -> 10.0.0.2/24
alloc a/net1 -> 10.0.0.3/24
alloc b/eth0 -> 10.0.0.4/24
alloc a/eth0 -> 10.0.0.2/24`,
		},
		{
			name:   "release twice",
			ranges: []string{"10.0.0.0/24"},
			steps:  []step{alloc("a"), get("a"), release("a"), release("a"), get("a"), release("never")},
			want: `
alloc a/eth0 -> 10.0.0.2/24
get a/eth0 -> true 10.0.0.2/24
release a/eth0 -> true 10.0.0.2/24
release a/eth0 -> false
get a/eth0 -> false
release never/eth0 -> false`,
		},
		{
			name:   "dual-stack gives one address per family in range order",
			ranges: []string{"fd00::/64", "10.0.0.0/24"},
			steps:  []step{alloc("a"), alloc("b")},
			want: `
alloc a/eth0 -> fd00::2/64 10.0.0.2/24
alloc b/eth0 -> fd00::3/64 10.0.0.3/24`,
		},
		{
			name:   "a family is exhausted only when all its ranges are, and failure takes nothing",
			ranges: []string{"10.0.0.0/30", "fd00::/64", "10.0.1.0/30"},
			steps:  []step{alloc("a"), alloc("b"), alloc("c"), release("a"), alloc("d")},
			want: `
alloc a/eth0 -> 10.0.0.2/30 fd00::2/64
alloc b/eth0 -> 10.0.1.2/30 fd00::3/64
alloc c/eth0 -> error: no free address in range 10.0.0.0/30; no free address in range 10.0.1.0/30
release a/eth0 -> true 10.0.0.2/30 fd00::2/64
alloc d/eth0 -> 10.0.0.2/30 fd00::4/64`,
		},
		{
			name:   "bad requests",
			ranges: []string{"10.0.0.0/24"},
			steps: []step{
				{op: "alloc", cid: "", ifName: "eth0"},
				{op: "alloc", cid: "a", ifName: ""},
				{op: "alloc", cid: "a\x00b", ifName: "eth0"},
				{op: "release", cid: "", ifName: "eth0"},
			},
			want: `
alloc /eth0 -> error: container id is empty
alloc a/ -> error: interface name is empty
alloc a` + "\x00" + `b/eth0 -> error: container id or interface name contains NUL
release /eth0 -> error: container id is empty`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := open(t, t.TempDir(), tt.ranges...)
			var got []string
			for _, s := range tt.steps {
				got = append(got, run(a, s))
			}
			if diff := cmp.Diff(strings.TrimSpace(tt.want), strings.Join(got, "\n")); diff != "" {
				t.Errorf("transcript (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExhaustedError(t *testing.T) {
	tests := []struct {
		name    string
		ranges  []string
		fill    int
		want    netip.Prefix // the range errors.As finds
		wantMsg string
	}{
		{
			name:    "one range",
			ranges:  []string{"10.244.1.0/29"},
			fill:    5,
			want:    netip.MustParsePrefix("10.244.1.0/29"),
			wantMsg: "no free address in range 10.244.1.0/29",
		},
		{
			name:    "ipv6 of dual-stack",
			ranges:  []string{"10.244.1.0/24", "fd00::/126"},
			fill:    2,
			want:    netip.MustParsePrefix("fd00::/126"),
			wantMsg: "no free address in range fd00::/126",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := open(t, t.TempDir(), tt.ranges...)
			for i := range tt.fill {
				if _, err := a.Allocate(Request{ContainerID: fmt.Sprint(i), IfName: "eth0"}); err != nil {
					t.Fatalf("Allocate %d: %v", i, err)
				}
			}
			_, err := a.Allocate(Request{ContainerID: "one-too-many", IfName: "eth0"})
			ee, ok := errors.AsType[*ExhaustedError](err)
			if !ok {
				t.Fatalf("Allocate error = %v, want *ExhaustedError", err)
			}
			if ee.Range != tt.want || err.Error() != tt.wantMsg {
				t.Errorf("error = %q naming %s, want %q naming %s", err, ee.Range, tt.wantMsg, tt.want)
			}
		})
	}
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	ranges := []string{"10.0.0.0/29", "fd00::/64"}
	first, err := Open(Config{StateDir: dir, Ranges: prefixes(ranges...)}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []step{alloc("a"), alloc("b"), alloc("c"), {op: "alloc", cid: "c", ifName: "net1"}, release("b")} {
		if got := run(first, s); strings.Contains(got, "error") {
			t.Fatal(got)
		}
	}
	want := first.List()

	_, err = Open(Config{StateDir: dir, Ranges: prefixes(ranges...)}, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Errorf("second Open while the first is open: error = %v, want one saying the db is locked", err)
	}
	if !errors.Is(err, bolterrors.ErrTimeout) {
		t.Errorf("second Open error %v does not wrap bbolt's ErrTimeout", err)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Allocate(Request{ContainerID: "late", IfName: "eth0"}); !errors.Is(err, errClosed) {
		t.Errorf("Allocate after Close: error = %v, want %v", err, errClosed)
	}

	a := open(t, dir, ranges...)
	if diff := cmp.Diff(want, a.List(), cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("List after reopen (-before +after):\n%s", diff)
	}
	// The cursors survived: b's address is not reused although it is the
	// lowest free one.
	if got, want := run(a, alloc("d")), "alloc d/eth0 -> 10.0.0.6/29 fd00::6/64"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := run(a, alloc("e")), "alloc e/eth0 -> 10.0.0.3/29 fd00::7/64"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRangesChanged(t *testing.T) {
	dir := t.TempDir()
	old := open(t, dir, "10.0.0.0/24", "fd00::/64")
	if got := run(old, alloc("a")); got != "alloc a/eth0 -> 10.0.0.2/24 fd00::2/64" {
		t.Fatal(got)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	a := open(t, dir, "10.0.1.0/24", "fd00::/64")
	want := []string{
		"get a/eth0 -> true 10.0.0.2/24 fd00::2/64",
		"alloc b/eth0 -> 10.0.1.2/24 fd00::3/64",
		"release a/eth0 -> true 10.0.0.2/24 fd00::2/64",
		"alloc c/eth0 -> 10.0.1.3/24 fd00::4/64",
	}
	var got []string
	for _, s := range []step{get("a"), alloc("b"), release("a"), alloc("c")} {
		got = append(got, run(a, s))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("transcript (-want +got):\n%s", diff)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	// The cursor of the range that is gone was dropped.
	db, err := bolt.Open(filepath.Join(dir, dbFile), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var cursors []string
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCursors).ForEach(func(k, v []byte) error {
			cursors = append(cursors, string(k)+"="+string(v))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"10.0.1.0/24=10.0.1.3", "fd00::/64=fd00::4"}, cursors); diff != "" {
		t.Errorf("stored cursors (-want +got):\n%s", diff)
	}
}

func TestConcurrentAllocateRelease(t *testing.T) {
	const n = 100
	dir := t.TempDir()
	a := open(t, dir, "10.0.0.0/24", "fd00::/64")

	var wg sync.WaitGroup
	results := make([]Allocation, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = a.Allocate(Request{ContainerID: fmt.Sprintf("c%03d", i), IfName: "eth0"})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := make(map[netip.Addr]string)
	for _, al := range results {
		if len(al.IPs) != 2 {
			t.Errorf("%s got %v, want one address per family", al.ContainerID, al.IPs)
		}
		for _, ip := range al.IPs {
			if other, dup := seen[ip.Addr()]; dup {
				t.Errorf("%s handed to both %s and %s", ip, other, al.ContainerID)
			}
			seen[ip.Addr()] = al.ContainerID
		}
	}
	if got := len(a.List()); got != n {
		t.Errorf("List has %d allocations, want %d", got, n)
	}

	for i := range n {
		wg.Go(func() {
			_, ok, err := a.Release(fmt.Sprintf("c%03d", i), "eth0")
			if err == nil && !ok {
				err = fmt.Errorf("release c%03d: nothing to release", i)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := a.List(); len(got) != 0 {
		t.Errorf("List after releasing all = %v, want empty", got)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := open(t, dir, "10.0.0.0/24", "fd00::/64").List(); len(got) != 0 {
		t.Errorf("List after reopen = %v, want empty", got)
	}
}

// TestCommitFailure checks that a failed commit leaves the in-memory state as
// it was. Closing the database under the allocator makes every commit fail
// the way an I/O error would.
func TestCommitFailure(t *testing.T) {
	a := open(t, t.TempDir(), "10.0.0.0/30")
	if got := run(a, alloc("a")); got != "alloc a/eth0 -> 10.0.0.2/30" {
		t.Fatal(got)
	}
	if err := a.db.Close(); err != nil {
		t.Fatal(err)
	}

	if _, _, err := a.Release("a", "eth0"); !errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		t.Errorf("Release error = %v, want one wrapping %v", err, bolterrors.ErrDatabaseNotOpen)
	}
	if _, ok := a.Get("a", "eth0"); !ok {
		t.Error("a failed Release dropped the allocation")
	}
	if _, err := a.Allocate(Request{ContainerID: "b", IfName: "eth0"}); !errors.As(err, new(*ExhaustedError)) {
		t.Errorf("Allocate error = %v, want *ExhaustedError: a failed Release must keep the address held", err)
	}

	a.mu.Lock()
	delete(a.allocs, "a\x00eth0")
	a.unholdLocked(netip.MustParseAddr("10.0.0.2"))
	a.mu.Unlock()
	if _, err := a.Allocate(Request{ContainerID: "b", IfName: "eth0"}); !errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		t.Errorf("Allocate error = %v, want one wrapping %v", err, bolterrors.ErrDatabaseNotOpen)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.held) != 0 || a.pools[0].used != 0 || len(a.allocs) != 0 {
		t.Errorf("after a failed Allocate: held %v, used %d, allocs %v; want all empty", a.held, a.pools[0].used, a.allocs)
	}
}

func TestGatewaysAndRanges(t *testing.T) {
	a := open(t, t.TempDir(), "10.244.1.0/24", "fd00:10:244:1::/64", "10.244.2.0/30")
	if diff := cmp.Diff(prefixes("10.244.1.1/24", "fd00:10:244:1::1/64", "10.244.2.1/30"), a.Gateways(), cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("Gateways (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(prefixes("10.244.1.0/24", "fd00:10:244:1::/64", "10.244.2.0/30"), a.Ranges(), cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("Ranges (-want +got):\n%s", diff)
	}
}

func TestOpenRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"relative state dir", Config{StateDir: "var/lib/nodenet", Ranges: prefixes("10.0.0.0/24")}, `stateDir "var/lib/nodenet": must be an absolute path`},
		{"empty state dir", Config{Ranges: prefixes("10.0.0.0/24")}, `stateDir "": must be an absolute path`},
		{"no ranges", Config{StateDir: dir}, "at least one range is required"},
		{"zero prefix", Config{StateDir: dir, Ranges: []netip.Prefix{{}}}, "range 0: invalid prefix"},
		{"unmasked", Config{StateDir: dir, Ranges: prefixes("10.244.1.5/24")}, "range 10.244.1.5/24: host bits are set (did you mean 10.244.1.0/24?)"},
		{"ipv4 /31", Config{StateDir: dir, Ranges: prefixes("10.0.0.0/31")}, "range 10.0.0.0/31: too small for pods"},
		{"ipv4 /32", Config{StateDir: dir, Ranges: prefixes("10.0.0.1/32")}, "range 10.0.0.1/32: too small for pods"},
		{"ipv6 /127", Config{StateDir: dir, Ranges: prefixes("fd00::/127")}, "range fd00::/127: too small for pods"},
		{"ipv6 /128", Config{StateDir: dir, Ranges: prefixes("fd00::1/128")}, "range fd00::1/128: too small for pods"},
		{"ipv4-mapped", Config{StateDir: dir, Ranges: prefixes("::ffff:10.0.0.0/120")}, "IPv4-mapped IPv6 is not supported"},
		{"overlap", Config{StateDir: dir, Ranges: prefixes("10.244.0.0/16", "fd00::/64", "10.244.1.0/24")}, "ranges 10.244.0.0/16 and 10.244.1.0/24 overlap"},
		{"duplicate", Config{StateDir: dir, Ranges: prefixes("fd00::/64", "fd00::/64")}, "ranges fd00::/64 and fd00::/64 overlap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Open(tt.cfg, zaptest.NewLogger(t))
			if err == nil {
				a.Close()
				t.Fatalf("Open succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}
