package conntrack

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/conntrack"
	"go.uber.org/zap/zaptest"
)

// fakeTable is an in-memory conntrack table. Entries are keyed by their
// original tuple, as the kernel looks them up for a delete.
type fakeTable struct {
	flows   []conntrack.Flow
	dumps   int
	dumpErr error
	// deleteErr fails the delete of entries with this original tuple.
	deleteErr map[string]error
	// vanish lists entries that expire between the dump and their delete.
	vanish map[string]bool
}

var _ table = (*fakeTable)(nil)

func (ft *fakeTable) Dump(*conntrack.DumpOptions) ([]conntrack.Flow, error) {
	ft.dumps++
	if ft.dumpErr != nil {
		return nil, ft.dumpErr
	}
	return slices.Clone(ft.flows), nil
}

func (ft *fakeTable) Delete(f conntrack.Flow) error {
	key := f.TupleOrig.String()
	if err := ft.deleteErr[key]; err != nil {
		return err
	}
	i := slices.IndexFunc(ft.flows, func(g conntrack.Flow) bool { return g.TupleOrig.String() == key })
	if i < 0 {
		return syscall.ENOENT
	}
	ft.flows = slices.Delete(ft.flows, i, i+1)
	if ft.vanish[key] {
		return fmt.Errorf("netlink receive: %w", syscall.ENOENT)
	}
	return nil
}

func (ft *fakeTable) Close() error { return nil }

// String lists the entries left, one per line, in the notation of flow.
func (ft *fakeTable) String() string {
	var lines []string
	for _, f := range ft.flows {
		lines = append(lines, fmt.Sprintf("%s > %s < %s",
			f.TupleOrig.IP.SourceAddress, f.TupleOrig.IP.DestinationAddress, f.TupleReply.IP.SourceAddress))
	}
	return strings.Join(lines, "\n")
}

func newFake(t *testing.T, flows ...string) *fakeTable {
	ft := &fakeTable{deleteErr: map[string]error{}, vanish: map[string]bool{}}
	for _, s := range flows {
		ft.flows = append(ft.flows, flow(t, s))
	}
	return ft
}

func newTestCleaner(t *testing.T, ft *fakeTable) (*Cleaner, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return newCleaner(ft, Config{Log: zaptest.NewLogger(t), Registerer: reg}), reg
}

// checkMetrics compares the Cleaner's counters in reg with deleted and
// failures.
func checkMetrics(t *testing.T, reg *prometheus.Registry, deleted, failures int) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var lines []string
	for _, f := range families {
		for _, m := range f.GetMetric() {
			lines = append(lines, fmt.Sprintf("%s %g", f.GetName(), m.GetCounter().GetValue()))
		}
	}
	want := []string{
		fmt.Sprintf("nodenet_proxy_conntrack_cleanup_failures_total %d", failures),
		fmt.Sprintf("nodenet_proxy_conntrack_deleted_total %d", deleted),
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

const (
	staleA  = "udp 10.0.0.2:40000 > 10.96.0.10:53 < 10.244.9.9:8053"
	staleB  = "udp 10.0.0.3:40000 > 10.96.0.10:53 < 10.244.3.5:8053"
	good    = "udp 10.0.0.4:40000 > 10.96.0.10:53 < 10.244.1.5:8053"
	tcpGone = "tcp 10.0.0.5:40000 > 10.96.0.10:53 < 10.244.9.9:8053"
)

func TestClean(t *testing.T) {
	ft := newFake(t, staleA, good, staleB, tcpGone)
	c, reg := newTestCleaner(t, ft)
	n, err := c.Clean(testState())
	if err != nil || n != 2 {
		t.Fatalf("Clean = %d, %v; want 2, nil", n, err)
	}
	want := strings.TrimSpace(`
10.0.0.4 > 10.96.0.10 < 10.244.1.5
10.0.0.5 > 10.96.0.10 < 10.244.9.9`)
	if diff := cmp.Diff(want, ft.String()); diff != "" {
		t.Errorf("entries left (-want +got):\n%s", diff)
	}
	checkMetrics(t, reg, 2, 0)

	// The same Services and endpoints again: the rules sent new flows only
	// to serving endpoints since, so the table is not read.
	if n, err := c.Clean(testState()); err != nil || n != 0 || ft.dumps != 1 {
		t.Errorf("second Clean = %d, %v after %d dumps; want 0, nil after 1", n, err, ft.dumps)
	}

	// An endpoint stops serving: read again.
	st := testState()
	st.Endpoints[dns] = st.Endpoints[dns][1:]
	if n, err := c.Clean(st); err != nil || n != 1 || ft.dumps != 2 {
		t.Errorf("Clean after a change = %d, %v after %d dumps; want 1, nil after 2", n, err, ft.dumps)
	}
	if diff := cmp.Diff("10.0.0.5 > 10.96.0.10 < 10.244.9.9", ft.String()); diff != "" {
		t.Errorf("entries left (-want +got):\n%s", diff)
	}
	checkMetrics(t, reg, 3, 0)
}

func TestCleanNothingToCompare(t *testing.T) {
	ft := newFake(t, staleA)
	c, _ := newTestCleaner(t, ft)
	// Only TCP Services: there is no frontend to clean, so no dump.
	st := testState()
	st.Services = st.Services[:1]
	st.Services[0].Ports = st.Services[0].Ports[1:]
	if n, err := c.Clean(st); err != nil || n != 0 || ft.dumps != 0 {
		t.Errorf("Clean = %d, %v after %d dumps; want 0, nil after 0", n, err, ft.dumps)
	}
}

func TestCleanVanished(t *testing.T) {
	ft := newFake(t, staleA, staleB)
	ft.vanish[flow(t, staleA).TupleOrig.String()] = true
	c, reg := newTestCleaner(t, ft)
	n, err := c.Clean(testState())
	if err != nil || n != 1 {
		t.Fatalf("Clean = %d, %v; want 1, nil: an entry gone before its delete is no failure", n, err)
	}
	checkMetrics(t, reg, 1, 0)
}

func TestCleanDeleteFailure(t *testing.T) {
	ft := newFake(t, staleA, staleB, good)
	ft.deleteErr[flow(t, staleA).TupleOrig.String()] = syscall.EPERM
	c, reg := newTestCleaner(t, ft)
	n, err := c.Clean(testState())
	if n != 1 || !errors.Is(err, syscall.EPERM) {
		t.Fatalf("Clean = %d, %v; want 1 and EPERM", n, err)
	}
	if want := "1 of 2 stale conntrack entries not deleted: delete <udp, Src: 10.0.0.2:40000, Dst: 10.96.0.10:53>: operation not permitted"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	checkMetrics(t, reg, 1, 1)

	// The failure is retried even though nothing changed.
	delete(ft.deleteErr, flow(t, staleA).TupleOrig.String())
	if n, err := c.Clean(testState()); err != nil || n != 1 || ft.dumps != 2 {
		t.Errorf("retry = %d, %v after %d dumps; want 1, nil after 2", n, err, ft.dumps)
	}
	checkMetrics(t, reg, 2, 1)
}

func TestCleanDumpFailure(t *testing.T) {
	ft := newFake(t, staleA)
	ft.dumpErr = syscall.ENOBUFS
	c, reg := newTestCleaner(t, ft)
	if _, err := c.Clean(testState()); !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("Clean error %v, want ENOBUFS", err)
	}
	checkMetrics(t, reg, 0, 1)
	ft.dumpErr = nil
	if n, err := c.Clean(testState()); err != nil || n != 1 {
		t.Errorf("retry = %d, %v; want 1, nil", n, err)
	}
}
