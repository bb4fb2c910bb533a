package shim_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nodenet/nodenet/cniexec/shim"
	"github.com/nodenet/nodenet/cniexec/wire"
)

// These tests never name a network namespace: a mistake would set the test machine's own lo down.
// The kernel tests (loopback_kernel_test.go) use namespaces they create.

// runLoopback executes the loopback plugin once with env as the whole environment.
func runLoopback(env map[string]string, stdin string) (int, string) {
	var out bytes.Buffer
	code := shim.RunLoopback(func(k string) string { return env[k] }, strings.NewReader(stdin), &out)
	return code, out.String()
}

// loConf is a loopback plugin configuration as containerd sends it, in cniVersion.
func loConf(cniVersion string) string {
	return `{"cniVersion":"` + cniVersion + `","name":"cni-loopback","type":"loopback"}`
}

// loEnv is the environment of a runtime's call of the loopback plugin for netns.
func loEnv(cmd, netns string) map[string]string {
	return map[string]string{
		"CNI_COMMAND":     cmd,
		"CNI_CONTAINERID": "c0ffee",
		"CNI_NETNS":       netns,
		"CNI_IFNAME":      "lo",
		"CNI_PATH":        "/opt/cni/bin",
	}
}

func TestLoopbackRejects(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "gone")
	notNetns := filepath.Join(dir, "file")
	if err := os.WriteFile(notNetns, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := loConf("1.0.0")
	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		want  wire.Error
	}{
		{
			name:  "missing CNI_COMMAND",
			env:   without(loEnv("ADD", missing), "CNI_COMMAND"),
			stdin: conf,
			want: wire.Error{CNIVersion: newest, Code: 4, Msg: "CNI_COMMAND is not set",
				Details: "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"},
		},
		{
			name:  "stdin not JSON",
			env:   loEnv("ADD", missing),
			stdin: `{"cniVersion": "1.0.0",`,
			want:  wire.Error{CNIVersion: newest, Code: 6, Msg: "network configuration on stdin is not valid JSON", Details: "unexpected end of JSON input"},
		},
		{
			name:  "stdin larger than MaxRequestBytes",
			env:   loEnv("ADD", missing),
			stdin: conf + strings.Repeat(" ", wire.MaxRequestBytes+1-len(conf)),
			want: wire.Error{CNIVersion: newest, Code: 7, Msg: "network configuration on stdin is too large",
				Details: fmt.Sprintf("more than %d bytes", wire.MaxRequestBytes)},
		},
		{
			name:  "no cniVersion",
			env:   loEnv("ADD", missing),
			stdin: `{"name":"cni-loopback","type":"loopback"}`,
			want:  wire.Error{CNIVersion: newest, Code: 7, Msg: "network configuration has no cniVersion"},
		},
		{
			name:  "cniVersion 0.2.0",
			env:   loEnv("ADD", missing),
			stdin: loConf("0.2.0"),
			want: wire.Error{CNIVersion: "0.2.0", Code: 1, Msg: `cniVersion "0.2.0" is not supported`,
				Details: "supported: [0.3.1 0.4.0 1.0.0 1.1.0]"},
		},
		{
			name:  "type nodenet-cni",
			env:   loEnv("ADD", missing),
			stdin: `{"cniVersion":"1.0.0","name":"nodenet","type":"nodenet-cni"}`,
			want: wire.Error{CNIVersion: "1.0.0", Code: 7, Msg: `network configuration has type "nodenet-cni", want "loopback"`,
				Details: "this is the loopback plugin; nodenet's own network uses type nodenet-cni"},
		},
		{
			name:  "no type",
			env:   loEnv("DEL", missing),
			stdin: `{"cniVersion":"0.3.1","name":"cni-loopback"}`,
			want: wire.Error{CNIVersion: "0.3.1", Code: 7, Msg: `network configuration has type "", want "loopback"`,
				Details: "this is the loopback plugin; nodenet's own network uses type nodenet-cni"},
		},
		{
			name:  "ADD without CNI_NETNS",
			env:   without(loEnv("ADD", missing), "CNI_NETNS"),
			stdin: conf,
			want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: "CNI_NETNS is not set", Details: "required for ADD"},
		},
		{
			name:  "CHECK without CNI_NETNS",
			env:   without(loEnv("CHECK", missing), "CNI_NETNS"),
			stdin: conf,
			want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: "CNI_NETNS is not set", Details: "required for CHECK"},
		},
		{
			name:  "ADD without CNI_CONTAINERID",
			env:   without(loEnv("ADD", missing), "CNI_CONTAINERID"),
			stdin: conf,
			want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: "CNI_CONTAINERID is not set", Details: "required for ADD"},
		},
		{
			name:  "DEL without CNI_IFNAME",
			env:   without(loEnv("DEL", missing), "CNI_IFNAME"),
			stdin: conf,
			want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: "CNI_IFNAME is not set", Details: "required for DEL"},
		},
		{
			name:  "unknown command",
			env:   loEnv("UP", missing),
			stdin: conf,
			want: wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: `CNI_COMMAND "UP" is not supported`,
				Details: "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"},
		},
		{
			name:  "prevResult not an object",
			env:   loEnv("ADD", missing),
			stdin: `{"cniVersion":"1.0.0","name":"chain","type":"loopback","prevResult":["eth0"]}`,
			want: wire.Error{CNIVersion: "1.0.0", Code: 6, Msg: "prevResult is not a JSON object",
				Details: "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"},
		},
		{
			name:  "ADD in a namespace that does not exist",
			env:   loEnv("ADD", missing),
			stdin: conf,
			want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: "CNI_NETNS is not usable", Details: missing + ": no such file"},
		},
		{
			// setns refuses a namespace of another kind before it changes anything.
			name:  "ADD in a mount namespace",
			env:   loEnv("ADD", "/proc/self/ns/mnt"),
			stdin: conf,
			want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: "CNI_NETNS is not usable", Details: "/proc/self/ns/mnt: not a network namespace"},
		},
		{
			name:  "CHECK of a file that is no namespace",
			env:   loEnv("CHECK", notNetns),
			stdin: loConf("0.4.0"),
			want:  wire.Error{CNIVersion: "0.4.0", Code: 4, Msg: "CNI_NETNS is not usable", Details: notNetns + ": not a network namespace"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout := runLoopback(tt.env, tt.stdin)
			if code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			if diff := cmp.Diff(tt.want, decodeError(t, stdout)); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoopbackWithoutNamespace(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "gone")
	notNetns := filepath.Join(dir, "file")
	if err := os.WriteFile(notNetns, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		env    map[string]string
		stdin  string
		stdout string
	}{
		// DEL must succeed when the namespace is gone: runtimes repeat it after removing it.
		{name: "DEL without CNI_NETNS", env: without(loEnv("DEL", ""), "CNI_NETNS"), stdin: loConf("1.1.0")},
		{name: "DEL of a removed namespace", env: loEnv("DEL", missing), stdin: loConf("0.3.1")},
		{name: "DEL of an unmounted namespace", env: loEnv("DEL", notNetns), stdin: loConf("1.0.0")},
		{name: "STATUS", env: map[string]string{"CNI_COMMAND": "STATUS"}, stdin: loConf("1.1.0")},
		{name: "GC", env: map[string]string{"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"},
			stdin: `{"cniVersion":"1.1.0","name":"cni-loopback","type":"loopback","cni.dev/valid-attachments":[]}`},
		{name: "VERSION", env: map[string]string{"CNI_COMMAND": "VERSION"}, stdin: loConf("0.4.0"),
			stdout: `{"cniVersion":"0.4.0","supportedVersions":` + supportedJSON + "}\n"},
		{name: "VERSION without stdin", env: map[string]string{"CNI_COMMAND": "VERSION"},
			stdout: `{"cniVersion":"` + newest + `","supportedVersions":` + supportedJSON + "}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout := runLoopback(tt.env, tt.stdin)
			if code != 0 {
				t.Errorf("exit code = %d, want 0", code)
			}
			if diff := cmp.Diff(tt.stdout, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoopbackResult(t *testing.T) {
	const netns = "/var/run/netns/cni-1234"
	both := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("::1/128")}
	v4 := both[:1]
	tests := []struct {
		version string
		addrs   []netip.Prefix
		want    string
	}{
		{version: "0.3.1", addrs: both, want: `{
  "cniVersion": "0.3.1",
  "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/cni-1234"}],
  "ips": [
    {"version": "4", "interface": 0, "address": "127.0.0.1/8"},
    {"version": "6", "interface": 0, "address": "::1/128"}
  ]
}`},
		{version: "0.4.0", addrs: v4, want: `{
  "cniVersion": "0.4.0",
  "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/cni-1234"}],
  "ips": [{"version": "4", "interface": 0, "address": "127.0.0.1/8"}]
}`},
		{version: "1.0.0", addrs: both, want: `{
  "cniVersion": "1.0.0",
  "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/cni-1234"}],
  "ips": [
    {"interface": 0, "address": "127.0.0.1/8"},
    {"interface": 0, "address": "::1/128"}
  ]
}`},
		{version: "1.1.0", addrs: v4, want: `{
  "cniVersion": "1.1.0",
  "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/cni-1234"}],
  "ips": [{"interface": 0, "address": "127.0.0.1/8"}]
}`},
		{version: "1.1.0", want: `{
  "cniVersion": "1.1.0",
  "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/cni-1234"}]
}`},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %v", tt.version, tt.addrs), func(t *testing.T) {
			got, err := shim.LoopbackResult(tt.version, netns, tt.addrs)
			if err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			if err := json.Compact(&want, []byte(tt.want)); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want.String(), string(got)); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseIfInet6(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    netip.Prefix
		wantErr string
	}{
		{
			name: "lo and a pod interface",
			data: "fe80000000000000a8bbccfffedd0001 02 40 20 80     eth0\n" +
				"00000000000000000000000000000001 01 80 10 80       lo\n",
			want: netip.MustParsePrefix("::1/128"),
		},
		{name: "no IPv6 on lo", data: "fe80000000000000a8bbccfffedd0001 02 40 20 80     eth0\n"},
		{name: "empty"},
		{name: "a name that only starts with lo", data: "00000000000000000000000000000001 03 80 10 80     lo0\n"},
		{
			name:    "bad address",
			data:    "0000000000000000000000000000zz01 01 80 10 80       lo\n",
			wantErr: `if_inet6: bad address "0000000000000000000000000000zz01": encoding/hex: invalid byte: U+007A 'z'`,
		},
		{name: "short address", data: "0001 01 80 10 80       lo\n", wantErr: `if_inet6: bad address "0001"`},
		{name: "long address", data: "000000000000000000000000000000000001 01 80 10 80 lo\n",
			wantErr: `if_inet6: bad address "000000000000000000000000000000000001"`},
		{name: "bad prefix length", data: "00000000000000000000000000000001 01 81 10 80       lo\n",
			wantErr: `if_inet6: bad prefix length "81"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := shim.ParseIfInet6([]byte(tt.data), "lo")
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.wantErr {
				t.Errorf("error = %q, want %q", gotErr, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("prefix = %v, want %v", got, tt.want)
			}
		})
	}
}
