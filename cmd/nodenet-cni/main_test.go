package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nodenet/nodenet/cniexec/wire"
	"github.com/nodenet/nodenet/internal/nstest"
)

// buildBinDir builds this command into a fresh directory, as the daemon installs it: nodenet-cni
// and loopback, a relative symlink to it.
func buildBinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "nodenet-cni"), ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Symlink("nodenet-cni", filepath.Join(dir, "loopback")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// execPlugin runs the binary at path with env as its whole environment.
func execPlugin(t *testing.T, path string, env map[string]string, stdin string) (int, string) {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run %s: %v", path, err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String()
}

func decodeError(t *testing.T, stdout string) wire.Error {
	t.Helper()
	var e wire.Error
	if err := json.Unmarshal([]byte(stdout), &e); err != nil {
		t.Fatalf("decode stdout %q: %v", stdout, err)
	}
	return e
}

// TestDispatchByName runs the same binary under its two names: as loopback it serves the loopback
// plugin on its own, as nodenet-cni it forwards to the daemon. Nothing here touches a namespace.
func TestDispatchByName(t *testing.T) {
	dir := buildBinDir(t)
	gone := filepath.Join(t.TempDir(), "netns-gone")
	socket := filepath.Join(t.TempDir(), "no-daemon.sock")
	env := map[string]string{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": gone, "CNI_IFNAME": "lo", "CNI_PATH": dir}
	loConf := `{"cniVersion":"0.3.1","name":"cni-loopback","type":"loopback","socket":"` + socket + `"}`
	shimConf := `{"cniVersion":"1.1.0","name":"nodenet","type":"nodenet-cni","socket":"` + socket + `"}`

	t.Run("loopback DEL needs no daemon", func(t *testing.T) {
		if code, stdout := execPlugin(t, filepath.Join(dir, "loopback"), env, loConf); code != 0 || stdout != "" {
			t.Errorf("exit code %d, stdout %q; want 0 and nothing", code, stdout)
		}
	})
	t.Run("loopback refuses nodenet's network", func(t *testing.T) {
		code, stdout := execPlugin(t, filepath.Join(dir, "loopback"), env, shimConf)
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		want := wire.Error{CNIVersion: "1.1.0", Code: 7, Msg: `network configuration has type "nodenet-cni", want "loopback"`,
			Details: "this is the loopback plugin; nodenet's own network uses type nodenet-cni"}
		if diff := cmp.Diff(want, decodeError(t, stdout)); diff != "" {
			t.Errorf("error (-want +got):\n%s", diff)
		}
	})
	t.Run("nodenet-cni forwards to the daemon", func(t *testing.T) {
		code, stdout := execPlugin(t, filepath.Join(dir, "nodenet-cni"), env, shimConf)
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		if e := decodeError(t, stdout); e.Code != 11 || e.Msg != "nodenet daemon is not reachable; try again later" {
			t.Errorf("error %+v, want code 11: the daemon is not reachable", e)
		}
	})
	t.Run("loopback VERSION", func(t *testing.T) {
		code, stdout := execPlugin(t, filepath.Join(dir, "loopback"), map[string]string{"CNI_COMMAND": "VERSION"}, "")
		want := `{"cniVersion":"1.1.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}` + "\n"
		if code != 0 || stdout != want {
			t.Errorf("exit code %d, stdout %q; want 0 and %q", code, stdout, want)
		}
	})
}

// TestLoopbackThroughLibcni calls the loopback plugin the way containerd's CRI does for every pod
// sandbox: libcni finds "loopback" in the plugin path, here the symlink to nodenet-cni.
func TestLoopbackThroughLibcni(t *testing.T) {
	nstest.RequireRoot(t)
	dir := buildBinDir(t)
	for _, v := range []string{"0.3.1", "0.4.0", "1.1.0"} { // containerd's version, the first with CHECK, the newest
		t.Run(v, func(t *testing.T) {
			n := nstest.NewIPNetns(t)
			ctx := context.Background()
			list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"` + v + `","name":"cni-loopback","plugins":[{"type":"loopback"}]}`))
			if err != nil {
				t.Fatal(err)
			}
			cni := libcni.NewCNIConfigWithCacheDir([]string{dir}, t.TempDir(), nil)
			rt := &libcni.RuntimeConf{ContainerID: "c0ffee", NetNS: n.Path, IfName: "lo"}

			res, err := cni.AddNetworkList(ctx, list, rt)
			if err != nil {
				t.Fatalf("AddNetworkList: %v", err)
			}
			got, err := types100.NewResultFromResult(res)
			if err != nil {
				t.Fatalf("convert result: %v", err)
			}
			var ips []string
			for _, ip := range got.IPs {
				ips = append(ips, ip.Address.String())
			}
			if diff := cmp.Diff([]string{"127.0.0.1/8", "::1/128"}, ips); diff != "" {
				t.Errorf("result addresses (-want +got):\n%s", diff)
			}
			if len(got.Interfaces) != 1 || *got.Interfaces[0] != (types100.Interface{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: n.Path}) {
				t.Errorf("result interfaces %v, want lo in %s", got.Interfaces, n.Path)
			}
			if !loUp(t, n.Path) {
				t.Errorf("lo is down after ADD")
			}
			check := v != "0.3.1" // CHECK came with 0.4.0; libcni refuses it before
			if check {
				if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
					t.Errorf("CheckNetworkList after ADD: %v", err)
				}
			}
			if v == "1.1.0" {
				if err := cni.GetStatusNetworkList(ctx, list); err != nil {
					t.Errorf("GetStatusNetworkList: %v", err)
				}
				if err := cni.GCNetworkList(ctx, list, &libcni.GCArgs{}); err != nil {
					t.Errorf("GCNetworkList: %v", err)
				}
			}

			if err := cni.DelNetworkList(ctx, list, rt); err != nil {
				t.Fatalf("DelNetworkList: %v", err)
			}
			if loUp(t, n.Path) {
				t.Errorf("lo is up after DEL")
			}
			if check {
				var e *types.Error
				if err := cni.CheckNetworkList(ctx, list, rt); !errors.As(err, &e) || e.Code != 999 || e.Msg != "lo is down in CNI_NETNS" {
					t.Errorf("CheckNetworkList after DEL = %v, want error 999: lo is down", err)
				}
			}

			n.Delete(t)
			if err := cni.DelNetworkList(ctx, list, rt); err != nil {
				t.Errorf("DelNetworkList after the namespace is gone: %v", err)
			}
		})
	}
}

// loUp reads lo's state in the namespace at path through netlink.
func loUp(t *testing.T, path string) bool {
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
	return link.Attrs().Flags&net.FlagUp != 0
}
