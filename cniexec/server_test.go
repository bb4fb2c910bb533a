package cniexec_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/nodenet/nodenet/cniexec"
	"github.com/nodenet/nodenet/cniexec/shim"
	"github.com/nodenet/nodenet/cniexec/wire"
	"github.com/nodenet/nodenet/routing"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// selfNetns is the pod namespace of these tests: the shim opens it and sends the descriptor, the
// server checks it is a network namespace. Opening one's own namespace needs no privilege.
const selfNetns = "/proc/self/ns/net"

const defaultRange = "10.0.0.0/29" // pod addresses 10.0.0.2 to 10.0.0.6

var testBridge = routing.Bridge{Name: "nn0", MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}, MTU: 1450}

// testServer is a Server on a socket in a temporary directory, running over in-memory fakes.
type testServer struct {
	srv    *cniexec.Server
	socket string
	alloc  *fakeAllocator
	pods   *fakePlumber
	ports  *fakePorts // nil: the server has no hostPort support
	reg    *prometheus.Registry
}

// startServer runs a server until the test ends; the cleanup waits for Run to return, so no
// request is still being handled when goleak looks.
func startServer(t *testing.T, cidr string) *testServer {
	t.Helper()
	return startServerPorts(t, cidr, true)
}

// startServerPorts is startServer, with hostPort support (a fakePorts) or without.
func startServerPorts(t *testing.T, cidr string, hostPorts bool) *testServer {
	t.Helper()
	ts := &testServer{
		// A directory that does not exist yet: New creates it.
		socket: filepath.Join(t.TempDir(), "run", "cni.sock"),
		alloc:  newFakeAllocator(cidr),
		pods:   newFakePlumber(),
		reg:    prometheus.NewRegistry(),
	}
	cfg := cniexec.Config{Socket: ts.socket, Bridge: testBridge, NetworkName: "nodenet"}
	if hostPorts {
		ts.ports = newFakePorts(ts.pods)
		cfg.HostPorts = ts.ports
	}
	srv, err := cniexec.New(cfg, ts.alloc, ts.pods, cniexec.NewMetrics(ts.reg), zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1) // Run's result; buffered so Run never blocks on a failed test
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ts
}

// conf is nodenet's plugin entry of the conflist as the runtime passes it on stdin, with
// overrides.
func (ts *testServer) conf(overrides map[string]any) string {
	m := map[string]any{"cniVersion": "1.1.0", "name": "nodenet", "type": "nodenet-cni", "socket": ts.socket}
	for k, v := range overrides {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// invocation is one run of the shim.
type invocation struct {
	cmd         string
	containerID string
	ifName      string         // "" means eth0
	netns       string         // "" means selfNetns
	conf        map[string]any // overrides of the plugin entry
}

// run executes the real shim against the server and returns its exit code and stdout.
func (ts *testServer) run(inv invocation) (int, string) {
	env := map[string]string{
		"CNI_COMMAND":     inv.cmd,
		"CNI_CONTAINERID": inv.containerID,
		"CNI_IFNAME":      inv.ifName,
		"CNI_NETNS":       inv.netns,
		"CNI_PATH":        "/opt/cni/bin",
	}
	if env["CNI_IFNAME"] == "" {
		env["CNI_IFNAME"] = "eth0"
	}
	if env["CNI_NETNS"] == "" {
		env["CNI_NETNS"] = selfNetns
	}
	var out bytes.Buffer
	code := shim.Run(func(k string) string { return env[k] }, strings.NewReader(ts.conf(inv.conf)), &out)
	return code, out.String()
}

// mustRun runs the shim and fails the test unless it succeeds.
func (ts *testServer) mustRun(t *testing.T, inv invocation) string {
	t.Helper()
	code, out := ts.run(inv)
	if code != 0 {
		t.Fatalf("%s %s: exit %d, stdout %s", inv.cmd, inv.containerID, code, out)
	}
	return out
}

func add(containerID string) invocation { return invocation{cmd: "ADD", containerID: containerID} }
func del(containerID string) invocation { return invocation{cmd: "DEL", containerID: containerID} }

// decodeError parses the shim's stdout as the one CNI error object it must be.
func decodeError(t *testing.T, stdout string) wire.Error {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var e wire.Error
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("decode CNI error %q: %v", stdout, err)
	}
	return e
}

// podLine is the fakePlumber.dump line of a pod interface attached to the test namespace.
func podLine(containerID, ip string) string {
	return fmt.Sprintf("%s eth0 %s [%s/29] gw [10.0.0.1/29] mtu 1450", routing.HostVethName(containerID, "eth0"), selfNetnsID(), ip)
}

// allocLine is the fakeAllocator.dump line of an allocation made through the shim.
func allocLine(containerID, ip string) string {
	return fmt.Sprintf("%s/eth0 [%s/29] %s", containerID, ip, selfNetns)
}

// sortedLines orders wanted lines the way the fakes' dumps are ordered: veth names are hashes.
func sortedLines(lines []string) []string {
	lines = slices.Clone(lines)
	slices.Sort(lines)
	return lines
}

// selfNetnsID is the test namespace as fakePlumber records it, "net:[4026531840]".
var selfNetnsID = sync.OnceValue(func() string {
	id, err := os.Readlink(selfNetns)
	if err != nil {
		panic(err) // the process's own namespace link is always there
	}
	return id
})

func TestCommands(t *testing.T) {
	otherPathToSameNetns := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	prevResult := func(addr string) map[string]any {
		return map[string]any{
			"cniVersion": "1.1.0",
			"interfaces": []any{map[string]any{"name": "eth0", "sandbox": selfNetns}},
			"ips":        []any{map[string]any{"address": addr, "interface": 0}},
		}
	}
	type step struct {
		do  func(ts *testServer) // when set, the step is this instead of a shim run
		inv invocation
		// want is the CNI error the shim prints; nil means success. Its cniVersion is that of the
		// request.
		want *wire.Error
	}
	ok := func(inv invocation) step { return step{inv: inv} }
	do := func(f func(ts *testServer)) step { return step{do: f} }
	fail := func(inv invocation, code uint, msg, details string) step {
		return step{inv: inv, want: &wire.Error{Code: code, Msg: msg, Details: details}}
	}
	tests := []struct {
		name       string
		setup      func(ts *testServer)
		steps      []step
		wantAllocs []string
		wantPods   []string
	}{
		{
			name:       "DEL releases and detaches and is idempotent",
			steps:      []step{ok(add("c1")), ok(add("c2")), ok(del("c1")), ok(del("c1"))},
			wantAllocs: []string{allocLine("c2", "10.0.0.3")},
			wantPods:   []string{podLine("c2", "10.0.0.3")},
		},
		{
			// The runtime may DEL after the namespace is gone; the shim then sends no descriptor.
			name: "DEL of a pod whose namespace is gone",
			steps: []step{
				ok(add("c1")),
				ok(invocation{cmd: "DEL", containerID: "c1", netns: "/nonexistent-dir/netns"}),
			},
		},
		{
			name:  "DEL of an unknown container succeeds",
			steps: []step{ok(del("c9"))},
		},
		{
			name: "DEL whose detach fails keeps the allocation",
			// The veth goes before the address: an address must never be reused while a veth
			// that carries it still exists.
			setup: func(ts *testServer) { ts.pods.failDetachFor("c1", "eth0", errors.New("device busy")) },
			steps: []step{
				ok(add("c1")),
				fail(del("c1"), wire.CodeIOFailure, "release pod network", "device busy"),
			},
			wantAllocs: []string{allocLine("c1", "10.0.0.2")},
			wantPods:   []string{podLine("c1", "10.0.0.2")},
		},
		{
			name:  "failed AttachPod leaves nothing",
			setup: func(ts *testServer) { ts.pods.failAttachFor("c1", "eth0", errors.New("veth exploded")) },
			steps: []step{
				fail(add("c1"), wire.CodeInternal, "attach pod interface", "veth exploded"),
				// c1's address went back to the pool.
				ok(add("c2")),
			},
			wantAllocs: []string{allocLine("c2", "10.0.0.2")},
			wantPods:   []string{podLine("c2", "10.0.0.2")},
		},
		{
			name: "failed AttachPod of a repeated ADD keeps the working pod",
			// The runtime has a working pod it will DEL; tearing it down here would break it.
			steps: []step{
				ok(add("c1")),
				do(func(ts *testServer) { ts.pods.failAttachFor("c1", "eth0", errors.New("veth exploded")) }),
				fail(invocation{cmd: "ADD", containerID: "c1", conf: map[string]any{"cniVersion": "1.0.0"}},
					wire.CodeInternal, "attach pod interface", "veth exploded"),
			},
			wantAllocs: []string{allocLine("c1", "10.0.0.2")},
			wantPods:   []string{podLine("c1", "10.0.0.2")},
		},
		{
			name: "exhausted range names it and leaves nothing",
			steps: []step{
				ok(add("c1")), ok(add("c2")), ok(add("c3")), ok(add("c4")), ok(add("c5")),
				fail(add("c6"), wire.CodeTryAgainLater, "no free pod address", "no free address in range 10.0.0.0/29"),
			},
			wantAllocs: []string{
				allocLine("c1", "10.0.0.2"), allocLine("c2", "10.0.0.3"), allocLine("c3", "10.0.0.4"),
				allocLine("c4", "10.0.0.5"), allocLine("c5", "10.0.0.6"),
			},
			wantPods: []string{
				podLine("c1", "10.0.0.2"), podLine("c2", "10.0.0.3"), podLine("c3", "10.0.0.4"),
				podLine("c4", "10.0.0.5"), podLine("c5", "10.0.0.6"),
			},
		},
		{
			name: "ADD of the interface from another namespace path is refused",
			steps: []step{
				ok(add("c1")),
				fail(invocation{cmd: "ADD", containerID: "c1", netns: otherPathToSameNetns}, wire.CodeInvalidEnvironment,
					"container already has this interface in another network namespace",
					"allocated for "+selfNetns+", asked for "+otherPathToSameNetns+"; DEL it first"),
			},
			wantAllocs: []string{allocLine("c1", "10.0.0.2")},
			wantPods:   []string{podLine("c1", "10.0.0.2")},
		},
		{
			name: "ADD into something that is not a network namespace",
			steps: []step{
				fail(invocation{cmd: "ADD", containerID: "c1", netns: "/proc/self/status"}, wire.CodeInvalidEnvironment,
					"CNI_NETNS is not usable", "/proc/self/status is not a namespace"),
				fail(invocation{cmd: "ADD", containerID: "c1", netns: "/proc/self/ns/uts"}, wire.CodeInvalidEnvironment,
					"CNI_NETNS is not usable", "/proc/self/ns/uts is not a network namespace"),
			},
		},
		{
			name: "CHECK of an unknown container",
			steps: []step{
				fail(invocation{cmd: "CHECK", containerID: "c9"}, wire.CodeUnknownContainer,
					"unknown container", "no allocation for container c9 interface eth0"),
			},
		},
		{
			name: "CHECK of a working pod",
			steps: []step{
				ok(add("c1")),
				ok(invocation{cmd: "CHECK", containerID: "c1"}),
				ok(invocation{cmd: "CHECK", containerID: "c1", conf: map[string]any{"prevResult": prevResult("10.0.0.2/29")}}),
			},
			wantAllocs: []string{allocLine("c1", "10.0.0.2")},
			wantPods:   []string{podLine("c1", "10.0.0.2")},
		},
		{
			name: "CHECK with a prevResult naming another address",
			steps: []step{
				ok(add("c1")),
				fail(invocation{cmd: "CHECK", containerID: "c1", conf: map[string]any{"prevResult": prevResult("10.0.0.5/29")}},
					wire.CodeInvalidConfig, "prevResult does not match the allocation", "prevResult has 10.0.0.5/29, the allocation has [10.0.0.2/29]"),
			},
			wantAllocs: []string{allocLine("c1", "10.0.0.2")},
			wantPods:   []string{podLine("c1", "10.0.0.2")},
		},
		{
			name:  "CHECK of broken plumbing",
			setup: func(ts *testServer) { ts.pods.failCheckFor("c1", "eth0", errors.New("eth0 has no address")) },
			steps: []step{
				ok(add("c1")),
				fail(invocation{cmd: "CHECK", containerID: "c1"}, wire.CodeInternal, "pod network is broken", "eth0 has no address"),
			},
			wantAllocs: []string{allocLine("c1", "10.0.0.2")},
			wantPods:   []string{podLine("c1", "10.0.0.2")},
		},
		{
			name: "STATUS before and after SetReady",
			steps: []step{
				fail(invocation{cmd: "STATUS"}, wire.CodeNotAvailable, "nodenet is not ready", "the daemon is starting"),
				do(func(ts *testServer) { ts.srv.SetReady() }),
				ok(invocation{cmd: "STATUS"}),
			},
		},
		{
			name: "GC keeps only the valid attachments",
			steps: []step{
				ok(add("c1")), ok(add("c2")), ok(add("c3")),
				ok(invocation{cmd: "GC", conf: map[string]any{"cni.dev/valid-attachments": []any{
					map[string]any{"containerID": "c2", "ifname": "eth0"},
					map[string]any{"containerID": "c3", "ifname": "net1"}, // another interface of c3
				}}}),
			},
			wantAllocs: []string{allocLine("c2", "10.0.0.3")},
			wantPods:   []string{podLine("c2", "10.0.0.3")},
		},
		{
			name:  "GC goes on after a failure and reports it",
			setup: func(ts *testServer) { ts.pods.failDetachFor("c1", "eth0", errors.New("device busy")) },
			steps: []step{
				ok(add("c1")), ok(add("c2")),
				fail(invocation{cmd: "GC"}, wire.CodeIOFailure, "garbage collection", "container c1 interface eth0: device busy"),
			},
			wantAllocs: []string{allocLine("c1", "10.0.0.2")},
			wantPods:   []string{podLine("c1", "10.0.0.2")},
		},
		{
			name: "config for another network",
			steps: []step{
				fail(invocation{cmd: "ADD", containerID: "c1", conf: map[string]any{"name": "other"}}, wire.CodeInvalidConfig,
					`network "other" is not served by this daemon`, `this daemon serves network "nodenet"`),
				fail(invocation{cmd: "DEL", containerID: "c1", conf: map[string]any{"name": "other", "cniVersion": "0.4.0"}}, wire.CodeInvalidConfig,
					`network "other" is not served by this daemon`, `this daemon serves network "nodenet"`),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, defaultRange)
			if tt.setup != nil {
				tt.setup(ts)
			}
			for i, s := range tt.steps {
				if s.do != nil {
					s.do(ts)
					continue
				}
				code, out := ts.run(s.inv)
				if s.want == nil {
					if code != 0 {
						t.Fatalf("step %d %s %s: exit %d, stdout %s", i, s.inv.cmd, s.inv.containerID, code, out)
					}
					continue
				}
				if code != 1 {
					t.Errorf("step %d %s %s: exit %d, want 1", i, s.inv.cmd, s.inv.containerID, code)
				}
				want := *s.want
				want.CNIVersion = "1.1.0"
				if v, ok := s.inv.conf["cniVersion"].(string); ok {
					want.CNIVersion = v
				}
				if diff := cmp.Diff(want, decodeError(t, out)); diff != "" {
					t.Errorf("step %d %s %s: error (-want +got):\n%s", i, s.inv.cmd, s.inv.containerID, diff)
				}
			}
			if diff := cmp.Diff(tt.wantAllocs, ts.alloc.dump()); diff != "" {
				t.Errorf("allocations (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(sortedLines(tt.wantPods), ts.pods.dump()); diff != "" {
				t.Errorf("veths (-want +got):\n%s", diff)
			}
		})
	}
}

// resultSummary is what chained plugins and the runtime read from an ADD result, taken through
// the CNI library's own conversion to the current result type.
type resultSummary struct {
	Version    string
	Interfaces []string // "name mac sandbox"
	IPs        []string // "address via gateway on interface index"
	Routes     []string
}

func summarize(t *testing.T, res types.Result) resultSummary {
	t.Helper()
	cur, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("convert result: %v", err)
	}
	s := resultSummary{Version: res.Version()}
	for _, i := range cur.Interfaces {
		s.Interfaces = append(s.Interfaces, fmt.Sprintf("%s %s %q", i.Name, i.Mac, i.Sandbox))
	}
	for _, ip := range cur.IPs {
		idx := "none"
		if ip.Interface != nil {
			idx = fmt.Sprint(*ip.Interface)
		}
		s.IPs = append(s.IPs, fmt.Sprintf("%s via %s on interface %s", &ip.Address, ip.Gateway, idx))
	}
	for _, r := range cur.Routes {
		s.Routes = append(s.Routes, fmt.Sprintf("%s via %s", &r.Dst, r.GW))
	}
	return s
}

func TestAddResult(t *testing.T) {
	veth := routing.HostVethName("c1", "eth0")
	wantSummary := func(version string) resultSummary {
		return resultSummary{
			Version: version,
			Interfaces: []string{
				`nn0 02:00:00:00:00:01 ""`,
				veth + ` 0e:00:00:00:00:01 ""`,
				`eth0 0e:00:00:00:01:01 "` + selfNetns + `"`,
			},
			IPs:    []string{"10.0.0.2/29 via 10.0.0.1 on interface 2"},
			Routes: []string{"0.0.0.0/0 via 10.0.0.1"},
		}
	}
	// What a runtime caches and replays to chained plugins, compared as JSON values: key order and
	// spacing are no part of the contract.
	const golden100 = `{
		"cniVersion": "VERSION",
		"interfaces": [
			{"name": "nn0", "mac": "02:00:00:00:00:01"},
			{"name": "VETH", "mac": "0e:00:00:00:00:01"},
			{"name": "eth0", "mac": "0e:00:00:00:01:01", "sandbox": "/proc/self/ns/net"}
		],
		"ips": [{"interface": 2, "address": "10.0.0.2/29", "gateway": "10.0.0.1"}],
		"routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]
	}`
	const golden040 = `{
		"cniVersion": "VERSION",
		"interfaces": [
			{"name": "nn0", "mac": "02:00:00:00:00:01"},
			{"name": "VETH", "mac": "0e:00:00:00:00:01"},
			{"name": "eth0", "mac": "0e:00:00:00:01:01", "sandbox": "/proc/self/ns/net"}
		],
		"ips": [{"version": "4", "interface": 2, "address": "10.0.0.2/29", "gateway": "10.0.0.1"}],
		"routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
		"dns": {}
	}`
	tests := []struct {
		version string
		golden  string
		decode  func([]byte) (types.Result, error)
	}{
		{version: "1.1.0", golden: golden100, decode: types100.NewResult},
		{version: "1.0.0", golden: golden100, decode: types100.NewResult},
		{version: "0.4.0", golden: golden040, decode: types040.NewResult},
		{version: "0.3.1", golden: golden040, decode: types040.NewResult},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			ts := startServer(t, defaultRange)
			out := ts.mustRun(t, invocation{cmd: "ADD", containerID: "c1", conf: map[string]any{"cniVersion": tt.version}})
			if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
				t.Errorf("stdout %q: want one JSON line", out)
			}
			want := strings.NewReplacer("VERSION", tt.version, "VETH", veth).Replace(tt.golden)
			if diff := cmp.Diff(jsonValue(t, want), jsonValue(t, out)); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			res, err := tt.decode([]byte(out))
			if err != nil {
				t.Fatalf("decode %s result: %v", tt.version, err)
			}
			if diff := cmp.Diff(wantSummary(tt.version), summarize(t, res)); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{allocLine("c1", "10.0.0.2")}, ts.alloc.dump()); diff != "" {
				t.Errorf("allocations (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{podLine("c1", "10.0.0.2")}, ts.pods.dump()); diff != "" {
				t.Errorf("veths (-want +got):\n%s", diff)
			}
		})
	}
}

func jsonValue(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v in %s", err, s)
	}
	return v
}

func TestAddIsIdempotent(t *testing.T) {
	ts := startServer(t, defaultRange)
	first := ts.mustRun(t, add("c1"))
	again := ts.mustRun(t, add("c1"))
	if diff := cmp.Diff(first, again); diff != "" {
		t.Errorf("repeated ADD result (-first +again):\n%s", diff)
	}
	if got := ts.alloc.createdCount(); got != 1 {
		t.Errorf("allocations made = %d, want 1", got)
	}
	if diff := cmp.Diff([]string{allocLine("c1", "10.0.0.2")}, ts.alloc.dump()); diff != "" {
		t.Errorf("allocations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{podLine("c1", "10.0.0.2")}, ts.pods.dump()); diff != "" {
		t.Errorf("veths (-want +got):\n%s", diff)
	}
}

func TestConcurrentAddsAndDels(t *testing.T) {
	const containers = 50
	ts := startServer(t, "10.0.0.0/24")
	type outcome struct {
		code int
		out  string
	}
	results := make([]outcome, containers)
	var wg sync.WaitGroup
	for i := range containers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, out := ts.run(add(fmt.Sprintf("c%02d", i)))
			results[i] = outcome{code, out}
		}()
	}
	wg.Wait()

	seen := map[string]string{} // address → container
	for i, r := range results {
		cid := fmt.Sprintf("c%02d", i)
		if r.code != 0 {
			t.Errorf("ADD %s: exit %d, stdout %s", cid, r.code, r.out)
			continue
		}
		res, err := types100.NewResult([]byte(r.out))
		if err != nil {
			t.Fatalf("ADD %s: decode result: %v", cid, err)
		}
		cur, err := types100.NewResultFromResult(res)
		if err != nil || len(cur.IPs) != 1 {
			t.Fatalf("ADD %s: result %s: %v", cid, r.out, err)
		}
		addr := cur.IPs[0].Address.String()
		if other, dup := seen[addr]; dup {
			t.Errorf("ADD %s got %s, already given to %s", cid, addr, other)
		}
		seen[addr] = cid
	}
	if got := len(ts.alloc.List()); got != containers {
		t.Errorf("%d allocations, want %d", got, containers)
	}
	if got := len(ts.pods.dump()); got != containers {
		t.Errorf("%d veths, want %d", got, containers)
	}

	for i := range containers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cid := fmt.Sprintf("c%02d", i)
			if code, out := ts.run(del(cid)); code != 0 {
				t.Errorf("DEL %s: exit %d, stdout %s", cid, code, out)
			}
		}()
	}
	wg.Wait()
	if diff := cmp.Diff([]string(nil), ts.alloc.dump()); diff != "" {
		t.Errorf("allocations after DEL (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string(nil), ts.pods.dump()); diff != "" {
		t.Errorf("veths after DEL (-want +got):\n%s", diff)
	}
}

// requestCounts reads nodenet_cni_requests_total from reg as sorted "command code count" lines.
func requestCounts(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var lines []string
	for _, f := range families {
		if f.GetName() != "nodenet_cni_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			lines = append(lines, fmt.Sprintf("%s %s %g", labels["command"], labels["code"], m.GetCounter().GetValue()))
		}
	}
	slices.Sort(lines)
	return lines
}

func TestMetrics(t *testing.T) {
	ts := startServer(t, defaultRange)
	ts.mustRun(t, add("c1"))
	ts.mustRun(t, add("c1"))
	ts.mustRun(t, add("c2"))
	ts.run(invocation{cmd: "CHECK", containerID: "c9"})
	ts.mustRun(t, del("c1"))
	ts.run(invocation{cmd: "STATUS"})
	ts.srv.SetReady()
	ts.mustRun(t, invocation{cmd: "STATUS"})
	// A command the shim would never forward is counted under a fixed label, so a client cannot
	// grow the label set.
	rawExchange(t, ts.socket, []byte(`{"command":"FROB","config":`+ts.conf(nil)+`}`))
	// A request that cannot be decoded names no command; it is counted as "other" with code 6.
	rawExchange(t, ts.socket, []byte("garbage"))

	want := []string{
		"ADD 0 3",
		"CHECK 3 1",
		"DEL 0 1",
		"STATUS 0 1",
		"STATUS 50 1",
		"other 4 1",
		"other 6 1",
	}
	if diff := cmp.Diff(want, requestCounts(t, ts.reg)); diff != "" {
		t.Errorf("nodenet_cni_requests_total (-want +got):\n%s", diff)
	}
}

// rawExchange sends payload as a client that is not the shim and returns the daemon's answer.
func rawExchange(t *testing.T, socket string, payload []byte) wire.Response {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(payload); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var resp wire.Response
	if err := json.Unmarshal(data, &resp); err != nil {
		t.Fatalf("decode response %q: %v", data, err)
	}
	return resp
}

func TestBadClients(t *testing.T) {
	ts := startServer(t, defaultRange)
	tests := []struct {
		name        string
		payload     string
		wantCode    uint
		wantMsg     string
		wantDetails string // "" means any
	}{
		{name: "garbage", payload: "garbage\n", wantCode: wire.CodeDecodeFailure, wantMsg: "decode shim request"},
		{name: "nothing at all", payload: "", wantCode: wire.CodeDecodeFailure, wantMsg: "decode shim request"},
		{name: "truncated request", payload: `{"command":"ADD","config":{"cniVer`, wantCode: wire.CodeDecodeFailure, wantMsg: "decode shim request"},
		{
			name:     "descriptor announced but missing",
			payload:  `{"command":"ADD","containerID":"c1","ifName":"eth0","netns":"/proc/self/ns/net","netnsFD":true,"config":` + ts.conf(nil) + `}`,
			wantCode: wire.CodeDecodeFailure, wantMsg: "decode shim request",
			wantDetails: "request announces a network namespace descriptor but carries none",
		},
		{
			name:     "configuration that is not an object",
			payload:  `{"command":"ADD","config":"nodenet"}`,
			wantCode: wire.CodeDecodeFailure, wantMsg: "network configuration is not valid JSON",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := rawExchange(t, ts.socket, []byte(tt.payload))
			if resp.Error == nil {
				t.Fatalf("response %+v, want an error", resp)
			}
			got := *resp.Error
			if tt.wantDetails == "" {
				got.Details = ""
			}
			want := wire.Error{Code: tt.wantCode, Msg: tt.wantMsg, Details: tt.wantDetails}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
	// The server is still serving, and none of that touched any state.
	ts.mustRun(t, add("c1"))
	if diff := cmp.Diff([]string{allocLine("c1", "10.0.0.2")}, ts.alloc.dump()); diff != "" {
		t.Errorf("allocations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{podLine("c1", "10.0.0.2")}, ts.pods.dump()); diff != "" {
		t.Errorf("veths (-want +got):\n%s", diff)
	}
}

func TestSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	// A socket file left by a daemon that died without removing it.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	srv, err := cniexec.New(cniexec.Config{Socket: socket, Bridge: testBridge}, newFakeAllocator(defaultRange), newFakePlumber(), nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("New over a stale socket: %v", err)
	}
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode(), os.ModeSocket|0o600; got != want {
		t.Errorf("socket mode = %v, want %v", got, want)
	}

	// Without metrics, and with the default network name, the server serves all the same.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	ts := &testServer{socket: socket}
	code, out := ts.run(add("c1"))
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if code != 0 {
		t.Errorf("ADD: exit %d, stdout %s", code, out)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Run returned: %v, want it removed", err)
	}
}

func TestReconcile(t *testing.T) {
	gone := filepath.Join(t.TempDir(), "gone") // its directory exists, the file does not
	const hidden = "/nonexistent-dir/x"        // the daemon cannot see the directory at all
	orphan := routing.HostVethName("c-orphan", "eth0")
	tests := []struct {
		name       string
		setup      func(ts *testServer)
		wantErr    string
		wantAllocs []string
		wantVeths  []string
	}{
		{
			name: "releases what is gone, keeps what cannot be judged, removes orphan veths",
			wantAllocs: []string{
				"c-alive/eth0 [10.0.0.2/29] " + selfNetns,
				"c-hidden/eth0 [10.0.0.4/29] " + hidden,
			},
			wantVeths: []string{
				routing.HostVethName("c-alive", "eth0") + " (no pod)",
				routing.HostVethName("c-hidden", "eth0") + " (no pod)",
			},
		},
		{
			name: "goes on after a failure and reports it",
			setup: func(ts *testServer) {
				ts.pods.failDetachFor("c-gone", "eth0", errors.New("device busy"))
				ts.pods.failDetachFor("c-orphan", "eth0", errors.New("device busy"))
			},
			// c-gone's veth, still there, belongs to no live allocation either: it is tried again.
			wantErr: "release container c-gone interface eth0: device busy\n" +
				"remove orphan veth " + routing.HostVethName("c-gone", "eth0") + ": device busy\n" +
				"remove orphan veth " + orphan + ": device busy",
			wantAllocs: []string{
				"c-alive/eth0 [10.0.0.2/29] " + selfNetns,
				"c-gone/eth0 [10.0.0.3/29] " + gone,
				"c-hidden/eth0 [10.0.0.4/29] " + hidden,
			},
			wantVeths: []string{
				routing.HostVethName("c-alive", "eth0") + " (no pod)",
				routing.HostVethName("c-gone", "eth0") + " (no pod)",
				routing.HostVethName("c-hidden", "eth0") + " (no pod)",
				orphan + " (no pod)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, defaultRange)
			// What a previous daemon left: three pods with their veths, and one veth whose
			// allocation is lost.
			for _, a := range []struct{ cid, netns string }{{"c-alive", selfNetns}, {"c-gone", gone}, {"c-hidden", hidden}} {
				if _, err := ts.alloc.Allocate(ipamRequest(a.cid, a.netns)); err != nil {
					t.Fatal(err)
				}
				ts.pods.addVeth(routing.HostVethName(a.cid, "eth0"))
			}
			ts.pods.addVeth(orphan)
			if tt.setup != nil {
				tt.setup(ts)
			}
			err := ts.srv.Reconcile()
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if diff := cmp.Diff(tt.wantErr, gotErr); diff != "" {
				t.Errorf("Reconcile error (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantAllocs, ts.alloc.dump()); diff != "" {
				t.Errorf("allocations (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(sortedLines(tt.wantVeths), ts.pods.dump()); diff != "" {
				t.Errorf("veths (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReconcileDuringAdd runs an ADD while Reconcile is half-way, as happens when the daemon
// restarts on a node where the runtime already has the conflist: the daemon serves before it
// reconciles. The new pod's veth is not in the allocations Reconcile listed, but it must not be
// taken for an orphan.
func TestReconcileDuringAdd(t *testing.T) {
	ts := startServer(t, defaultRange)
	type outcome struct {
		code int
		out  string
	}
	added := make(chan outcome, 1) // the ADD's result; sent once, read once
	ts.pods.onPodVeths = func() {
		go func() {
			code, out := ts.run(add("c1"))
			added <- outcome{code, out}
		}()
		// Give the ADD time to finish if the server lets it run now; a server that holds it back
		// until Reconcile is done makes this a plain wait.
		select {
		case r := <-added:
			added <- r
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := ts.srv.Reconcile(); err != nil {
		t.Errorf("Reconcile: %v", err)
	}
	if r := <-added; r.code != 0 {
		t.Fatalf("ADD: exit %d, stdout %s", r.code, r.out)
	}
	if diff := cmp.Diff([]string{allocLine("c1", "10.0.0.2")}, ts.alloc.dump()); diff != "" {
		t.Errorf("allocations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{podLine("c1", "10.0.0.2")}, ts.pods.dump()); diff != "" {
		t.Errorf("veths (-want +got):\n%s", diff)
	}
}
