package shim_test

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nodenet/nodenet/cniexec/wire"
	"github.com/nodenet/nodenet/internal/nstest"
)

// loState reads lo's state in the namespace at path through netlink, independently of the
// plugin's ioctls.
func loState(t *testing.T, path string) (up bool, addrs []string) {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	defer nl.Close()
	link, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatalf("lo: %v", err)
	}
	list, err := nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("addresses of lo: %v", err)
	}
	for _, a := range list {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		addrs = append(addrs, netip.PrefixFrom(ip.Unmap(), ones).String())
	}
	return link.Attrs().Flags&net.FlagUp != 0, addrs
}

// parseResult reads an ADD result the way libcni does for cniVersion, converted to the current
// types. (The conversion from results before 1.0.0 gives empty rather than nil lists: compare
// with cmpopts.EquateEmpty.)
func parseResult(t *testing.T, cniVersion, stdout string) *types100.Result {
	t.Helper()
	r, err := version.NewResult(cniVersion, []byte(stdout))
	if err != nil {
		t.Fatalf("parse result %q: %v", stdout, err)
	}
	cur, err := types100.NewResultFromResult(r)
	if err != nil {
		t.Fatalf("convert result: %v", err)
	}
	return cur
}

// loResult is the result ADD must print for lo in sandbox with addrs, as parseResult returns it.
func loResult(sandbox string, addrs ...string) *types100.Result {
	r := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: sandbox}},
	}
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		r.IPs = append(r.IPs, &types100.IPConfig{Interface: types100.Int(0),
			Address: net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}})
	}
	return r
}

// checkThreadsHome fails the test if any thread of this process is left in another network
// namespace than the process's own.
func checkThreadsHome(t *testing.T) {
	t.Helper()
	home, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		if ns != home {
			t.Errorf("thread %s is in %s, the process in %s", task.Name(), ns, home)
		}
	}
}

func TestLoopbackKernel(t *testing.T) {
	for _, v := range wire.SupportedVersions {
		t.Run(v, func(t *testing.T) {
			n := nstest.NewIPNetns(t)
			if up, _ := loState(t, n.Path); up {
				t.Fatalf("lo of a new namespace is up")
			}
			env := loEnv("ADD", n.Path)

			code, stdout := runLoopback(env, loConf(v))
			if code != 0 {
				t.Fatalf("ADD: exit code %d, stdout %q", code, stdout)
			}
			up, addrs := loState(t, n.Path)
			if !up {
				t.Errorf("lo is down after ADD")
			}
			// The result reports lo's addresses as the kernel has them.
			want := loResult(n.Path, "127.0.0.1/8", "::1/128")
			if diff := cmp.Diff(want, parseResult(t, v, stdout), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ADD result (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"127.0.0.1/8", "::1/128"}, addrs); diff != "" {
				t.Errorf("addresses of lo (-want +got):\n%s", diff)
			}

			env["CNI_COMMAND"] = "CHECK"
			if code, stdout := runLoopback(env, loConf(v)); code != 0 || stdout != "" {
				t.Errorf("CHECK after ADD: exit code %d, stdout %q; want 0 and nothing", code, stdout)
			}

			env["CNI_COMMAND"] = "DEL"
			if code, stdout := runLoopback(env, loConf(v)); code != 0 || stdout != "" {
				t.Errorf("DEL: exit code %d, stdout %q; want 0 and nothing", code, stdout)
			}
			if up, _ := loState(t, n.Path); up {
				t.Errorf("lo is up after DEL")
			}

			env["CNI_COMMAND"] = "CHECK"
			code, stdout = runLoopback(env, loConf(v))
			if code != 1 {
				t.Errorf("CHECK after DEL: exit code %d, want 1", code)
			}
			if diff := cmp.Diff(wire.Error{CNIVersion: v, Code: 999, Msg: "lo is down in CNI_NETNS", Details: n.Path}, decodeError(t, stdout)); diff != "" {
				t.Errorf("CHECK after DEL (-want +got):\n%s", diff)
			}

			// A second DEL after the runtime removed the namespace.
			n.Delete(t)
			env["CNI_COMMAND"] = "DEL"
			if code, stdout := runLoopback(env, loConf(v)); code != 0 || stdout != "" {
				t.Errorf("DEL of the removed namespace: exit code %d, stdout %q; want 0 and nothing", code, stdout)
			}
			checkThreadsHome(t)
		})
	}
}

func TestLoopbackAddTwice(t *testing.T) {
	n := nstest.NewIPNetns(t)
	env := loEnv("ADD", n.Path)
	for i := range 2 {
		code, stdout := runLoopback(env, loConf("1.1.0"))
		if code != 0 {
			t.Fatalf("ADD %d: exit code %d, stdout %q", i, code, stdout)
		}
		if diff := cmp.Diff(loResult(n.Path, "127.0.0.1/8", "::1/128"), parseResult(t, "1.1.0", stdout), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("ADD %d result (-want +got):\n%s", i, diff)
		}
	}
	if up, _ := loState(t, n.Path); !up {
		t.Errorf("lo is down after two ADDs")
	}
}

func TestLoopbackWithoutIPv6(t *testing.T) {
	n := nstest.NewIPNetns(t)
	// In the test's namespace only: sh runs there, and /proc/sys/net is per namespace.
	n.Exec(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6")
	code, stdout := runLoopback(loEnv("ADD", n.Path), loConf("0.3.1"))
	if code != 0 {
		t.Fatalf("ADD: exit code %d, stdout %q", code, stdout)
	}
	if diff := cmp.Diff(loResult(n.Path, "127.0.0.1/8"), parseResult(t, "0.3.1", stdout), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("ADD result (-want +got):\n%s", diff)
	}
	if !strings.Contains(stdout, `"version":"4"`) {
		t.Errorf("0.3.1 result %s: want the IP version given", stdout)
	}
}

func TestLoopbackPrevResult(t *testing.T) {
	n := nstest.NewIPNetns(t)
	// Chained after another plugin, the loopback plugin hands its result on.
	prev := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"` + n.Path + `"}],` +
		`"ips":[{"interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"}],"dns":{}}`
	conf := `{"cniVersion":"1.0.0","name":"chain","type":"loopback","prevResult":` + prev + `}`
	code, stdout := runLoopback(loEnv("ADD", n.Path), conf)
	if code != 0 {
		t.Fatalf("ADD: exit code %d, stdout %q", code, stdout)
	}
	var got, want any
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("result %q: %v", stdout, err)
	}
	if err := json.Unmarshal([]byte(prev), &want); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result (-prevResult +got):\n%s", diff)
	}
	if up, _ := loState(t, n.Path); !up {
		t.Errorf("lo is down after ADD")
	}
}
