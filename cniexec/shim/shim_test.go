package shim_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/nodenet/nodenet/cniexec/shim"
	"github.com/nodenet/nodenet/cniexec/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newest is the version the shim falls back to when it has none from the caller.
const newest = "1.1.0"

const supportedJSON = `["0.3.1","0.4.0","1.0.0","1.1.0"]`

// run executes the shim once with env as the whole environment.
func run(env map[string]string, stdin string) (int, string) {
	var out bytes.Buffer
	code := shim.Run(func(k string) string { return env[k] }, strings.NewReader(stdin), &out)
	return code, out.String()
}

// decodeError parses stdout as exactly one CNI error object on one line, as runtimes read it.
func decodeError(t *testing.T, stdout string) wire.Error {
	t.Helper()
	if !strings.HasSuffix(stdout, "\n") || strings.Count(stdout, "\n") != 1 {
		t.Errorf("stdout %q: want one JSON line", stdout)
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var e wire.Error
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("decode stdout %q: %v", stdout, err)
	}
	return e
}

// netConf is a plugin configuration as a runtime sends it, with the shim's own keys.
func netConf(cniVersion, socket, logFile string) string {
	m := map[string]any{"name": "nodenet", "type": "nodenet-cni"}
	if cniVersion != "" {
		m["cniVersion"] = cniVersion
	}
	if socket != "" {
		m["socket"] = socket
	}
	if logFile != "" {
		m["logFile"] = logFile
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func addEnv(cmd string) map[string]string {
	return map[string]string{
		"CNI_COMMAND":     cmd,
		"CNI_CONTAINERID": "c0ffee",
		"CNI_NETNS":       "/proc/self/ns/net",
		"CNI_IFNAME":      "eth0",
		"CNI_PATH":        "/opt/cni/bin",
	}
}

func without(env map[string]string, key string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		if k != key {
			out[k] = v
		}
	}
	return out
}

// fakeDaemon accepts connections on a unix socket, records each decoded request and answers every
// one with the same raw bytes. Connections are served one at a time by a single goroutine that
// Cleanup stops.
type fakeDaemon struct {
	socket string
	answer string // written verbatim; "" closes without answering

	mu    sync.Mutex
	conns int
	reqs  []wire.Request
	errs  []error
}

func startDaemon(t *testing.T, answer string) *fakeDaemon {
	t.Helper()
	d := &fakeDaemon{socket: filepath.Join(t.TempDir(), "cni.sock"), answer: answer}
	ln, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan struct{}) // closed by the accept loop when the listener is closed
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			d.serve(conn)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, err := range d.errs {
			t.Errorf("fake daemon: %v", err)
		}
	})
	return d
}

func (d *fakeDaemon) serve(conn net.Conn) {
	defer conn.Close()
	// Counted before anything is read: the shim cannot return before this connection is answered
	// or closed, so after Run returns the count is final.
	d.mu.Lock()
	d.conns++
	d.mu.Unlock()
	var req wire.Request
	err := json.NewDecoder(conn).Decode(&req)
	d.mu.Lock()
	if err != nil {
		d.errs = append(d.errs, fmt.Errorf("decode request: %w", err))
	} else {
		d.reqs = append(d.reqs, req)
	}
	d.mu.Unlock()
	if d.answer != "" {
		if _, err := io.WriteString(conn, d.answer); err != nil {
			d.mu.Lock()
			d.errs = append(d.errs, fmt.Errorf("write answer: %w", err))
			d.mu.Unlock()
		}
	}
}

func (d *fakeDaemon) requests() (int, []wire.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns, append([]wire.Request(nil), d.reqs...)
}

func TestVersion(t *testing.T) {
	d := startDaemon(t, `{"result":{"should":"not be asked"}}`)
	tests := []struct {
		name  string
		stdin string
		want  string
	}{
		{name: "no stdin", stdin: "", want: newest},
		{name: "requested version", stdin: netConf("0.4.0", d.socket, ""), want: "0.4.0"},
		{name: "no cniVersion", stdin: netConf("", d.socket, ""), want: newest},
		{name: "unsupported version", stdin: netConf("0.2.0", d.socket, ""), want: newest},
		// The spec wants an answer to VERSION whatever stdin holds.
		{name: "stdin not JSON", stdin: "{not json", want: newest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout := run(map[string]string{"CNI_COMMAND": "VERSION"}, tt.stdin)
			if code != 0 {
				t.Errorf("exit code = %d, want 0; stdout %q", code, stdout)
			}
			want := `{"cniVersion":"` + tt.want + `","supportedVersions":` + supportedJSON + "}\n"
			if diff := cmp.Diff(want, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
		})
	}
	if conns, _ := d.requests(); conns != 0 {
		t.Errorf("VERSION dialled the daemon %d times, want never", conns)
	}
}

func TestRejectedBeforeDialling(t *testing.T) {
	d := startDaemon(t, `{"result":{"should":"not be asked"}}`)
	conf := netConf("1.0.0", d.socket, "")
	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		want  wire.Error
	}{
		{
			name:  "missing CNI_COMMAND",
			env:   without(addEnv("ADD"), "CNI_COMMAND"),
			stdin: conf,
			want: wire.Error{CNIVersion: newest, Code: 4, Msg: "CNI_COMMAND is not set",
				Details: "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"},
		},
		{
			name:  "stdin not JSON",
			env:   addEnv("ADD"),
			stdin: `{"cniVersion": "1.0.0",`,
			want:  wire.Error{CNIVersion: newest, Code: 6, Msg: "network configuration on stdin is not valid JSON", Details: "unexpected end of JSON input"},
		},
		{
			name:  "empty stdin",
			env:   addEnv("DEL"),
			stdin: "",
			want:  wire.Error{CNIVersion: newest, Code: 6, Msg: "network configuration on stdin is not valid JSON", Details: "unexpected end of JSON input"},
		},
		{
			name:  "stdin larger than MaxRequestBytes",
			env:   addEnv("ADD"),
			stdin: conf + strings.Repeat(" ", wire.MaxRequestBytes+1-len(conf)),
			want: wire.Error{CNIVersion: newest, Code: 7, Msg: "network configuration on stdin is too large",
				Details: fmt.Sprintf("more than %d bytes", wire.MaxRequestBytes)},
		},
		{
			name:  "cniVersion 0.2.0",
			env:   addEnv("ADD"),
			stdin: netConf("0.2.0", d.socket, ""),
			want: wire.Error{CNIVersion: "0.2.0", Code: 1, Msg: `cniVersion "0.2.0" is not supported`,
				Details: "supported: [0.3.1 0.4.0 1.0.0 1.1.0]"},
		},
		{
			name:  "missing cniVersion",
			env:   addEnv("ADD"),
			stdin: netConf("", d.socket, ""),
			want:  wire.Error{CNIVersion: newest, Code: 7, Msg: "network configuration has no cniVersion"},
		},
		{
			name:  "unknown command",
			env:   addEnv("REFRESH"),
			stdin: conf,
			want: wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: `CNI_COMMAND "REFRESH" is not supported`,
				Details: "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"},
		},
		{
			name:  "lower-case command",
			env:   addEnv("add"),
			stdin: conf,
			want: wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: `CNI_COMMAND "add" is not supported`,
				Details: "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"},
		},
	}
	for _, cmd := range []string{"ADD", "CHECK"} {
		for _, v := range []string{"CNI_NETNS", "CNI_CONTAINERID", "CNI_IFNAME"} {
			tests = append(tests, struct {
				name  string
				env   map[string]string
				stdin string
				want  wire.Error
			}{
				name:  cmd + " without " + v,
				env:   without(addEnv(cmd), v),
				stdin: conf,
				want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: v + " is not set", Details: "required for " + cmd},
			})
		}
	}
	for _, v := range []string{"CNI_CONTAINERID", "CNI_IFNAME"} {
		tests = append(tests, struct {
			name  string
			env   map[string]string
			stdin string
			want  wire.Error
		}{
			name:  "DEL without " + v,
			env:   without(addEnv("DEL"), v),
			stdin: conf,
			want:  wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: v + " is not set", Details: "required for DEL"},
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout := run(tt.env, tt.stdin)
			if code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			if diff := cmp.Diff(tt.want, decodeError(t, stdout)); diff != "" {
				t.Errorf("CNI error (-want +got):\n%s", diff)
			}
		})
	}
	if conns, _ := d.requests(); conns != 0 {
		t.Errorf("invalid calls dialled the daemon %d times, want never", conns)
	}
}

func TestDaemonUnreachable(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "cni.sock")
	// A socket file nobody listens on any more: connect fails with ECONNREFUSED, not ENOENT.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()

	tests := []struct {
		cmd, socket, reason string
		code                uint
	}{
		{cmd: "ADD", socket: missing, reason: "no such file or directory", code: 11},
		{cmd: "DEL", socket: missing, reason: "no such file or directory", code: 11},
		{cmd: "CHECK", socket: missing, reason: "no such file or directory", code: 11},
		{cmd: "GC", socket: missing, reason: "no such file or directory", code: 11},
		{cmd: "STATUS", socket: missing, reason: "no such file or directory", code: 50},
		{cmd: "ADD", socket: stale, reason: "connection refused", code: 11},
		{cmd: "STATUS", socket: stale, reason: "connection refused", code: 50},
	}
	for _, tt := range tests {
		t.Run(tt.cmd+" "+filepath.Base(tt.socket), func(t *testing.T) {
			code, stdout := run(addEnv(tt.cmd), netConf("1.0.0", tt.socket, ""))
			if code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			want := wire.Error{
				CNIVersion: "1.0.0",
				Code:       tt.code,
				Msg:        "nodenet daemon is not reachable; try again later",
				Details:    fmt.Sprintf("socket %s: dial unix %s: connect: %s", tt.socket, tt.socket, tt.reason),
			}
			if diff := cmp.Diff(want, decodeError(t, stdout)); diff != "" {
				t.Errorf("CNI error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestForwardsToDaemon(t *testing.T) {
	// Whitespace and characters encoding/json would escape prove the result is not re-encoded.
	const result = `{ "cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/proc/self/ns/net"}],
  "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}], "dns": {"search": ["a<b>&c"]} }`
	tests := []struct {
		name       string
		env        map[string]string
		stdinExtra string // appended inside the configuration object
		answer     string
		wantCode   int
		wantStdout string
	}{
		{
			name: "ADD result printed verbatim",
			env: map[string]string{
				"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/proc/self/ns/net",
				"CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
				"CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "HOME": "/root",
			},
			// The runtimeConfig libcni injects for the portMappings capability travels as part of
			// the configuration, byte for byte: the daemon decodes it, the shim does not.
			stdinExtra: `,"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"198.18.0.11"}]}`,
			answer:     `{"result":` + result + "}\n",
			wantCode:   0,
			wantStdout: result + "\n",
		},
		{
			name:       "CHECK with no result prints nothing",
			env:        addEnv("CHECK"),
			answer:     `{}`,
			wantCode:   0,
			wantStdout: "",
		},
		{
			name:       "DEL needs no CNI_NETNS",
			env:        without(addEnv("DEL"), "CNI_NETNS"),
			answer:     `{}`,
			wantCode:   0,
			wantStdout: "",
		},
		{
			name:       "GC needs no container",
			env:        map[string]string{"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"},
			answer:     `{}`,
			wantCode:   0,
			wantStdout: "",
		},
		{
			name:       "STATUS",
			env:        map[string]string{"CNI_COMMAND": "STATUS"},
			answer:     `{}`,
			wantCode:   0,
			wantStdout: "",
		},
		{
			name:       "daemon error without cniVersion gets the caller's",
			env:        addEnv("ADD"),
			answer:     `{"error":{"code":7,"msg":"network \"other\" is not served by this daemon","details":"serving nodenet"}}`,
			wantCode:   1,
			wantStdout: `{"cniVersion":"1.0.0","code":7,"msg":"network \"other\" is not served by this daemon","details":"serving nodenet"}` + "\n",
		},
		{
			name:       "daemon error keeps its own cniVersion",
			env:        addEnv("CHECK"),
			answer:     `{"error":{"cniVersion":"0.4.0","code":3,"msg":"unknown container"}}`,
			wantCode:   1,
			wantStdout: `{"cniVersion":"0.4.0","code":3,"msg":"unknown container"}` + "\n",
		},
		{
			name:       "STATUS not available",
			env:        map[string]string{"CNI_COMMAND": "STATUS"},
			answer:     `{"error":{"code":50,"msg":"plugin not ready","details":"waiting for the Node's podCIDRs"}}`,
			wantCode:   1,
			wantStdout: `{"cniVersion":"1.0.0","code":50,"msg":"plugin not ready","details":"waiting for the Node's podCIDRs"}` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startDaemon(t, tt.answer)
			conf := netConf("1.0.0", d.socket, "")
			stdin := conf[:len(conf)-1] + tt.stdinExtra + "}"
			code, stdout := run(tt.env, stdin)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d", code, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantStdout, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			want := []wire.Request{{
				Command:     tt.env["CNI_COMMAND"],
				ContainerID: tt.env["CNI_CONTAINERID"],
				Netns:       tt.env["CNI_NETNS"],
				IfName:      tt.env["CNI_IFNAME"],
				Args:        tt.env["CNI_ARGS"],
				Path:        tt.env["CNI_PATH"],
				NetnsFD:     tt.env["CNI_NETNS"] != "",
				Config:      json.RawMessage(stdin),
			}}
			conns, got := d.requests()
			if conns != 1 {
				t.Errorf("daemon saw %d connections, want 1", conns)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("request (-want +got):\n%s", diff)
			}
		})
	}
}

func TestForwardsLargestConfig(t *testing.T) {
	d := startDaemon(t, `{}`)
	conf := netConf("1.0.0", d.socket, "")
	// Exactly MaxRequestBytes is allowed; the padding is inside the object so it stays one value.
	stdin := conf[:len(conf)-1] + strings.Repeat(" ", wire.MaxRequestBytes-len(conf)) + "}"
	if len(stdin) != wire.MaxRequestBytes {
		t.Fatalf("stdin is %d bytes, want %d", len(stdin), wire.MaxRequestBytes)
	}
	code, stdout := run(addEnv("ADD"), stdin)
	if code != 0 || stdout != "" {
		t.Errorf("Run = %d, %q; want 0 and no output", code, stdout)
	}
	_, reqs := d.requests()
	if len(reqs) != 1 {
		t.Fatalf("daemon got %d requests, want 1", len(reqs))
	}
	// encoding/json compacts a RawMessage it encodes; the daemon decodes it as JSON, so the
	// meaning is what has to arrive intact.
	var got, want map[string]any
	if err := json.Unmarshal(reqs[0].Config, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(stdin), &want); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("forwarded config (-want +got):\n%s", diff)
	}
}

func TestDaemonBadAnswer(t *testing.T) {
	tests := []struct {
		name, answer, details string
	}{
		{name: "closed without answer", answer: "", details: "daemon closed the connection without an answer"},
		{name: "not JSON", answer: "nope", details: "read response: invalid character 'o' in literal null (expecting 'u')"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startDaemon(t, tt.answer)
			code, stdout := run(addEnv("ADD"), netConf("1.0.0", d.socket, ""))
			if code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			want := wire.Error{
				CNIVersion: "1.0.0",
				Code:       11,
				Msg:        "nodenet daemon is not reachable; try again later",
				Details:    "socket " + d.socket + ": " + tt.details,
			}
			if diff := cmp.Diff(want, decodeError(t, stdout)); diff != "" {
				t.Errorf("CNI error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLogFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	tests := []struct {
		name      string
		env       map[string]string
		socket    string
		cniVer    string
		wantLines []string // after the timestamp
	}{
		{
			name:      "invalid environment",
			env:       without(addEnv("ADD"), "CNI_NETNS"),
			socket:    missing,
			cniVer:    "1.0.0",
			wantLines: []string{`ADD container=c0ffee ifname=eth0 code=4 msg="CNI_NETNS is not set" details="required for ADD"`},
		},
		{
			name:   "daemon unreachable",
			env:    addEnv("DEL"),
			socket: missing,
			cniVer: "1.0.0",
			wantLines: []string{fmt.Sprintf(`DEL container=c0ffee ifname=eth0 code=11 msg="nodenet daemon is not reachable; try again later" details="socket %s: dial unix %s: connect: no such file or directory"`,
				missing, missing)},
		},
		{
			name:      "unsupported version",
			env:       addEnv("CHECK"),
			socket:    missing,
			cniVer:    "0.1.0",
			wantLines: []string{`CHECK container=c0ffee ifname=eth0 code=1 msg="cniVersion \"0.1.0\" is not supported" details="supported: [0.3.1 0.4.0 1.0.0 1.1.0]"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logFile := filepath.Join(t.TempDir(), "cni.log")
			stdin := netConf(tt.cniVer, tt.socket, logFile)
			// Twice: the file is appended to, never truncated.
			for range 2 {
				if code, _ := run(tt.env, stdin); code != 1 {
					t.Fatalf("exit code = %d, want 1", code)
				}
			}
			got := readLogLines(t, logFile)
			want := append(append([]string(nil), tt.wantLines...), tt.wantLines...)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("log lines (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("success writes nothing", func(t *testing.T) {
		d := startDaemon(t, `{"result":{"cniVersion":"1.0.0"}}`)
		logFile := filepath.Join(t.TempDir(), "cni.log")
		if code, stdout := run(addEnv("ADD"), netConf("1.0.0", d.socket, logFile)); code != 0 {
			t.Fatalf("Run = %d, %q; want 0", code, stdout)
		}
		if _, err := os.Stat(logFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("log file after success: stat error %v, want it not to exist", err)
		}
	})

	t.Run("daemon error", func(t *testing.T) {
		d := startDaemon(t, `{"error":{"code":3,"msg":"unknown container","details":"c0ffee"}}`)
		logFile := filepath.Join(t.TempDir(), "cni.log")
		if code, _ := run(addEnv("CHECK"), netConf("1.0.0", d.socket, logFile)); code != 1 {
			t.Fatalf("exit code = %d, want 1", code)
		}
		want := []string{`CHECK container=c0ffee ifname=eth0 code=3 msg="unknown container" details="c0ffee"`}
		if diff := cmp.Diff(want, readLogLines(t, logFile)); diff != "" {
			t.Errorf("log lines (-want +got):\n%s", diff)
		}
	})

	t.Run("unwritable log file still answers", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "no-such-dir", "cni.log")
		code, stdout := run(without(addEnv("ADD"), "CNI_IFNAME"), netConf("1.0.0", missing, logFile))
		if code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
		want := wire.Error{CNIVersion: "1.0.0", Code: 4, Msg: "CNI_IFNAME is not set", Details: "required for ADD"}
		if diff := cmp.Diff(want, decodeError(t, stdout)); diff != "" {
			t.Errorf("CNI error (-want +got):\n%s", diff)
		}
	})
}

// readLogLines returns the log's lines with their leading RFC 3339 timestamp checked and removed.
func readLogLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read log: %v", err)
	}
	if !strings.HasSuffix(string(data), "\n") {
		t.Errorf("log %q does not end in a newline", data)
	}
	var lines []string
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		ts, rest, ok := strings.Cut(line, " ")
		if !ok {
			t.Errorf("log line %q has no timestamp", line)
			continue
		}
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Errorf("log line %q: timestamp: %v", line, err)
		}
		lines = append(lines, rest)
	}
	return lines
}

// TestNetnsOpenedByShim: the shim opens CNI_NETNS itself (its descriptor travels to the daemon),
// so a path that does not exist fails ADD at once, while DEL of a vanished pod still reaches the
// daemon without a descriptor.
func TestNetnsOpenedByShim(t *testing.T) {
	d := startDaemon(t, `{}`)
	conf := netConf("1.0.0", d.socket, "")
	env := addEnv("ADD")
	env["CNI_NETNS"] = filepath.Join(t.TempDir(), "gone")
	code, stdout := run(env, conf)
	if e := decodeError(t, stdout); code != 1 || e.Code != wire.CodeInvalidEnvironment || !strings.Contains(e.Details, "gone") {
		t.Errorf("ADD with a missing netns: exit %d, %+v; want code 4 naming the path", code, e)
	}
	env["CNI_COMMAND"] = "DEL"
	if code, stdout := run(env, conf); code != 0 {
		t.Errorf("DEL with a missing netns: exit %d %s, want success", code, stdout)
	}
	if _, reqs := d.requests(); len(reqs) != 1 || reqs[0].Command != "DEL" || reqs[0].NetnsFD {
		t.Errorf("daemon requests = %+v, want one DEL without a descriptor", reqs)
	}
}
