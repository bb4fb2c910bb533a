package cniexec_test

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nodenet/nodenet/cniexec"
	"github.com/nodenet/nodenet/cniexec/wire"
	"github.com/nodenet/nodenet/routing"
)

var _ cniexec.PortMapper = (*fakePorts)(nil)

// fakePorts keeps hostPort mappings in memory, with the rules of the real one that the server
// relies on: a mapping whose host port and protocol another interface holds is a conflict, a
// port outside 1..65535 is invalid, and a failed Map changes nothing.
type fakePorts struct {
	pods *fakePlumber // to check that mappings go before the pod's veth

	mu       sync.Mutex
	held     map[routing.Attachment]fakeMapping
	adopted  map[routing.Attachment][]netip.Addr // the last Adopt's argument
	failMap  error
	failChk  error
	problems []string // what the server did in the wrong order
}

type fakeMapping struct {
	ips      []netip.Addr
	mappings []routing.PortMapping
}

func newFakePorts(pods *fakePlumber) *fakePorts {
	return &fakePorts{pods: pods, held: map[routing.Attachment]fakeMapping{}}
}

func (f *fakePorts) Map(att routing.Attachment, ips []netip.Addr, mappings []routing.PortMapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failMap != nil {
		return f.failMap
	}
	for _, m := range mappings {
		if m.HostPort < 1 || m.HostPort > 65535 {
			return &routing.InvalidPortMappingError{Mapping: m, Reason: "hostPort out of range"}
		}
		for other, h := range f.held {
			if other == att {
				continue
			}
			for _, o := range h.mappings {
				if o.HostPort == m.HostPort && o.Protocol == m.Protocol {
					return &routing.PortConflictError{Want: m.String(), Held: o.String(), Holder: other.ContainerID + "/" + other.IfName}
				}
			}
		}
	}
	if !f.pods.has(routing.HostVethName(att.ContainerID, att.IfName)) {
		f.problems = append(f.problems, fmt.Sprintf("Map %s before its veth exists", att.ContainerID))
	}
	if len(mappings) == 0 {
		delete(f.held, att)
		return nil
	}
	f.held[att] = fakeMapping{slices.Clone(ips), slices.Clone(mappings)}
	return nil
}

func (f *fakePorts) Unmap(att routing.Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.held[att]; ok && !f.pods.has(routing.HostVethName(att.ContainerID, att.IfName)) {
		f.problems = append(f.problems, fmt.Sprintf("Unmap %s after its veth was removed", att.ContainerID))
	}
	delete(f.held, att)
	return nil
}

func (f *fakePorts) Check(att routing.Attachment, ips []netip.Addr, mappings []routing.PortMapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failChk != nil {
		return f.failChk
	}
	h := f.held[att]
	if !slices.Equal(h.mappings, mappings) || len(mappings) > 0 && !slices.Equal(h.ips, ips) {
		return fmt.Errorf("have %v on %v, want %v on %v", h.mappings, h.ips, mappings, ips)
	}
	return nil
}

func (f *fakePorts) Adopt(live map[routing.Attachment][]netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adopted = maps.Clone(live)
	for att := range f.held {
		if _, ok := live[att]; !ok {
			delete(f.held, att)
		}
	}
	return nil
}

// setFail makes Map and Check fail with these errors (nil: succeed).
func (f *fakePorts) setFail(mapErr, checkErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failMap, f.failChk = mapErr, checkErr
}

// dump is the held mappings as sorted lines "containerID/ifName [ips] [mappings]".
func (f *fakePorts) dump() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for att, h := range f.held {
		lines = append(lines, fmt.Sprintf("%s/%s %v %v", att.ContainerID, att.IfName, h.ips, h.mappings))
	}
	slices.Sort(lines)
	return lines
}

func (f *fakePorts) orderProblems() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.problems)
}

func (f *fakePorts) adoptedLive() map[routing.Attachment][]netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.adopted)
}

func (p *fakePlumber) has(veth string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.veths[veth]
	return ok
}

// withPorts is the runtimeConfig libcni injects for the portMappings capability.
func withPorts(inv invocation, mappings ...map[string]any) invocation {
	if inv.conf == nil {
		inv.conf = map[string]any{}
	}
	inv.conf["runtimeConfig"] = map[string]any{"portMappings": mappings}
	return inv
}

func port(host, container int, proto string) map[string]any {
	return map[string]any{"hostPort": host, "containerPort": container, "protocol": proto}
}

func TestHostPortLifecycle(t *testing.T) {
	ts := startServer(t, defaultRange)
	web := port(8080, 80, "tcp")
	dns := map[string]any{"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "198.18.0.11"}
	ts.mustRun(t, withPorts(add("c1"), web, dns))
	want := []string{fmt.Sprintf("c1/eth0 [10.0.0.2] %v", []routing.PortMapping{
		{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: "198.18.0.11"},
	})}
	if diff := cmp.Diff(want, ts.ports.dump()); diff != "" {
		t.Errorf("mappings after ADD (-want +got):\n%s", diff)
	}
	check := withPorts(invocation{cmd: "CHECK", containerID: "c1"}, web, dns)
	ts.mustRun(t, check)

	t.Run("CHECK with other mappings fails", func(t *testing.T) {
		code, out := ts.run(withPorts(invocation{cmd: "CHECK", containerID: "c1"}, web))
		if e := decodeError(t, out); code == 0 || e.Code != wire.CodeInternal || e.Msg != "hostPort mappings are not in place" {
			t.Errorf("exit %d, error %+v", code, e)
		}
	})
	t.Run("CHECK fails when the kernel lost them", func(t *testing.T) {
		ts.ports.setFail(nil, errors.New("hostPort 8080/tcp ... is missing from the kernel"))
		defer ts.ports.setFail(nil, nil)
		code, out := ts.run(check)
		if e := decodeError(t, out); code == 0 || e.Code != wire.CodeInternal || !strings.Contains(e.Details, "missing from the kernel") {
			t.Errorf("exit %d, error %+v", code, e)
		}
	})
	t.Run("a retried ADD with fewer mappings keeps only those", func(t *testing.T) {
		ts.mustRun(t, withPorts(add("c1"), web))
		want := []string{fmt.Sprintf("c1/eth0 [10.0.0.2] %v", []routing.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}})}
		if diff := cmp.Diff(want, ts.ports.dump()); diff != "" {
			t.Errorf("mappings (-want +got):\n%s", diff)
		}
	})
	t.Run("DEL removes them before the veth", func(t *testing.T) {
		ts.mustRun(t, del("c1"))
		if got := ts.ports.dump(); got != nil {
			t.Errorf("mappings left after DEL: %v", got)
		}
		ts.mustRun(t, del("c1"))
	})
	if p := ts.ports.orderProblems(); p != nil {
		t.Errorf("order: %v", p)
	}
}

func TestHostPortFailuresLeaveNothing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, ts *testServer)
		mapping  map[string]any
		wantCode uint
		wantMsg  string
		wantIn   string // in the details
	}{
		{
			name:     "conflict with another pod",
			setup:    func(t *testing.T, ts *testServer) { ts.mustRun(t, withPorts(add("c-holder"), port(8080, 80, "tcp"))) },
			mapping:  port(8080, 9090, "tcp"),
			wantCode: wire.CodeTryAgainLater, wantMsg: "hostPort is taken by another pod", wantIn: "held by c-holder/eth0",
		},
		{
			name:     "invalid mapping",
			mapping:  port(0, 80, "tcp"),
			wantCode: wire.CodeInvalidConfig, wantMsg: "invalid port mapping", wantIn: "hostPort out of range",
		},
		{
			name: "loopback port held by another program of the node",
			setup: func(_ *testing.T, ts *testServer) {
				ts.ports.setFail(&routing.PortUnavailableError{Want: "hostPort 54323/tcp on 127.0.0.1 to 10.0.0.2:80", Err: syscall.EADDRINUSE}, nil)
			},
			mapping:  map[string]any{"hostPort": 54323, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
			wantCode: wire.CodeTryAgainLater, wantMsg: "hostPort cannot be opened on the node",
			wantIn: "hostPort 54323/tcp on 127.0.0.1 to 10.0.0.2:80: address already in use",
		},
		{
			name: "kernel failure",
			setup: func(_ *testing.T, ts *testServer) {
				ts.ports.setFail(errors.New("netlink: operation not permitted"), nil)
			},
			mapping:  port(8080, 80, "tcp"),
			wantCode: wire.CodeInternal, wantMsg: "program hostPort mappings", wantIn: "operation not permitted",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, defaultRange)
			if tc.setup != nil {
				tc.setup(t, ts)
			}
			allocsBefore, vethsBefore := ts.alloc.dump(), ts.pods.dump()
			code, out := ts.run(withPorts(add("c1"), tc.mapping))
			e := decodeError(t, out)
			if code == 0 || e.Code != tc.wantCode || e.Msg != tc.wantMsg || !strings.Contains(e.Details, tc.wantIn) {
				t.Errorf("exit %d, error %+v; want code %d %q with %q", code, e, tc.wantCode, tc.wantMsg, tc.wantIn)
			}
			if diff := cmp.Diff(allocsBefore, ts.alloc.dump()); diff != "" {
				t.Errorf("allocations (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(vethsBefore, ts.pods.dump()); diff != "" {
				t.Errorf("veths (-before +after):\n%s", diff)
			}
		})
	}
}

// TestHostPortRetriedAddKeepsPod: a failed ADD of a pod that already has its network (a retry)
// must not take that network away; the runtime DELs it when it gives up.
func TestHostPortRetriedAddKeepsPod(t *testing.T) {
	ts := startServer(t, defaultRange)
	ts.mustRun(t, withPorts(add("c-holder"), port(8080, 80, "tcp")))
	ts.mustRun(t, add("c1"))
	code, out := ts.run(withPorts(add("c1"), port(8080, 80, "tcp")))
	if e := decodeError(t, out); code == 0 || e.Code != wire.CodeTryAgainLater {
		t.Fatalf("exit %d, error %+v", code, e)
	}
	if diff := cmp.Diff([]string{allocLine("c-holder", "10.0.0.2"), allocLine("c1", "10.0.0.3")}, ts.alloc.dump()); diff != "" {
		t.Errorf("allocations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(sortedLines([]string{podLine("c-holder", "10.0.0.2"), podLine("c1", "10.0.0.3")}), ts.pods.dump()); diff != "" {
		t.Errorf("veths (-want +got):\n%s", diff)
	}
}

func TestHostPortWithoutSupport(t *testing.T) {
	ts := startServerPorts(t, defaultRange, false)
	code, out := ts.run(withPorts(add("c1"), port(8080, 80, "tcp")))
	if e := decodeError(t, out); code == 0 || e.Code != wire.CodeInvalidConfig || e.Msg != "hostPort mappings are not supported" {
		t.Errorf("exit %d, error %+v", code, e)
	}
	if got := ts.alloc.dump(); got != nil {
		t.Errorf("allocations left: %v", got)
	}
	// Without mappings, nothing changes for such a server.
	ts.mustRun(t, withPorts(add("c2")))
	ts.mustRun(t, invocation{cmd: "CHECK", containerID: "c2"})
	ts.mustRun(t, del("c2"))
}

func TestHostPortGCAndReconcile(t *testing.T) {
	ts := startServer(t, defaultRange)
	ts.mustRun(t, withPorts(add("c1"), port(8080, 80, "tcp")))
	ts.mustRun(t, withPorts(add("c2"), port(8081, 80, "tcp")))
	ts.mustRun(t, invocation{cmd: "GC", conf: map[string]any{
		"cni.dev/valid-attachments": []map[string]string{{"containerID": "c1", "ifname": "eth0"}},
	}})
	want := []string{fmt.Sprintf("c1/eth0 [10.0.0.2] %v", []routing.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}})}
	if diff := cmp.Diff(want, ts.ports.dump()); diff != "" {
		t.Errorf("mappings after GC (-want +got):\n%s", diff)
	}
	if err := ts.srv.Reconcile(); err != nil {
		t.Fatal(err)
	}
	wantLive := map[routing.Attachment][]netip.Addr{{ContainerID: "c1", IfName: "eth0"}: {netip.MustParseAddr("10.0.0.2")}}
	if diff := cmp.Diff(wantLive, ts.ports.adoptedLive(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Adopt got (-want +got):\n%s", diff)
	}
	if p := ts.ports.orderProblems(); p != nil {
		t.Errorf("order: %v", p)
	}
}
