package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodenet/nodenet/e2e/lab"
)

// TestKillDuringAdds kills the daemon with SIGKILL while 50 ADDs are in flight, restarts it and
// checks the promises of the crash-safe state: no address given twice, every pod that got a
// result still works, and every allocation without a live pod is gone after reconcile and GC.
func TestKillDuringAdds(t *testing.T) {
	const pods = 50
	l := newLab(t)
	node, rt := startNodeRuntime(t, l)
	all := newPods(t, l, "k", pods)
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make([]error, pods)
	done := make(chan int, pods)
	for i, p := range all {
		wg.Go(func() {
			errs[i] = rt.Add(ctx, p)
			done <- i
		})
	}
	// Kill once a handful of ADDs have finished, so some are done, some in flight, some not
	// started; fall back to a deadline on a machine fast enough to finish them all first.
	deadline := time.After(10 * time.Second)
	for finished := 0; finished < 5; finished++ {
		select {
		case <-done:
		case <-deadline:
		}
	}
	if err := node.Kill(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	var ok, failed []*lab.Pod
	for i, p := range all {
		if errs[i] == nil {
			ok = append(ok, p)
		} else {
			failed = append(failed, p)
		}
	}
	t.Logf("after SIGKILL: %d ADDs succeeded, %d failed", len(ok), len(failed))
	if len(failed) == 0 {
		t.Log("every ADD finished before the kill; the crash covered no in-flight ADD this run")
	}
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	if err := node.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]string{}
	for _, p := range ok {
		addr := p.IPs[0].Addr()
		if other, dup := seen[addr]; dup {
			t.Fatalf("pods %s and %s both hold %s", other, p.Name, addr)
		}
		seen[addr] = p.Name
	}
	runAll(t, ok, func(p *lab.Pod) error {
		if err := rt.Check(ctx, p); err != nil {
			return fmt.Errorf("CHECK after restart: %w", err)
		}
		return node.NS.Ping(p.IPs[0].Addr().String())
	})
	// The runtime's GC names the attachments it knows; everything else must go.
	if err := rt.GC(ctx, ok); err != nil {
		t.Fatalf("GC: %v", err)
	}
	// A retried ADD of a pod whose first ADD died works and gets an address no one holds.
	if len(failed) > 0 {
		retry := failed[0]
		if err := rt.Add(ctx, retry); err != nil {
			t.Fatalf("retried ADD: %v", err)
		}
		if other, dup := seen[retry.IPs[0].Addr()]; dup {
			t.Fatalf("retried ADD of %s got %s, held by %s", retry.Name, retry.IPs[0].Addr(), other)
		}
		ok = append(ok, retry)
	}
	veths := podVeths(t, node)
	if len(veths) != len(ok) {
		t.Errorf("%d veths after GC, want %d (one per pod that got a result)", len(veths), len(ok))
	}
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, a := range allocations(t, node) {
		got = append(got, a.ContainerID)
	}
	for _, p := range ok {
		want = append(want, p.ContainerID)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("allocations after GC:\n got %v\nwant %v", got, want)
	}
}

// TestRestartAdoptsAndReconciles restarts the daemon with pods running: their traffic keeps
// flowing through the same bridge, an allocation whose netns vanished while the daemon was down is
// released, and a veth that no allocation owns is removed.
func TestRestartAdoptsAndReconciles(t *testing.T) {
	l := newLab(t)
	node := startNode(t, l, lab.NodeOptions{Name: "node1", Index: 1})
	rt, err := node.Runtime()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	keep, gone := addPod(t, l, rt, "keep"), addPod(t, l, rt, "gone")
	before, err := node.NS.Run("cat", "/sys/class/net/nodenet0/ifindex")
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	// While the daemon is down: one pod disappears without a DEL, and a stray veth appears.
	if err := gone.NS.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NS.Run("ip", "link", "add", "nnstray0", "type", "veth", "peer", "name", "nnstray1"); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NS.Run("ip", "link", "set", "nnstray0", "master", "nodenet0"); err != nil {
		t.Fatal(err)
	}
	// Pods keep working with the daemon down: nothing was torn down on exit.
	if err := keep.NS.Ping("10.244.1.1"); err != nil {
		t.Errorf("pod lost its network while the daemon was stopped: %v", err)
	}
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	if err := node.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := node.NS.Run("cat", "/sys/class/net/nodenet0/ifindex")
	if err != nil {
		t.Fatal(err)
	}
	if before != after {
		t.Errorf("bridge was recreated (ifindex %s → %s); it must be adopted", before, after)
	}
	if err := rt.Check(ctx, keep); err != nil {
		t.Errorf("CHECK of the surviving pod: %v", err)
	}
	if err := keep.NS.Ping("10.244.1.1"); err != nil {
		t.Error(err)
	}
	veths := podVeths(t, node)
	if len(veths) != 1 {
		t.Errorf("veths after reconcile = %v, want only the surviving pod's", veths)
	}
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	allocs := allocations(t, node)
	if len(allocs) != 1 || allocs[0].ContainerID != keep.ContainerID {
		t.Errorf("allocations after reconcile = %v, want only %s", allocs, keep.ContainerID)
	}
}
