package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodenet/nodenet/e2e/lab"
)

// TestBadInput executes the installed shim the way a runtime would, with broken environments and
// configurations, and checks each gets the spec's error code, a message saying what is wrong, and
// leaves no partial state behind.
func TestBadInput(t *testing.T) {
	l := newLab(t)
	// A /29 has five usable addresses: the exhaustion case fills them.
	node := startNode(t, l, lab.NodeOptions{Name: "node1", Index: 1, PodCIDRs: []string{"10.244.1.0/29"}})
	rt, err := node.Runtime()
	if err != nil {
		t.Fatal(err)
	}
	conf := pluginConf(t, rt.List.Bytes, "1.1.0")
	pod, err := l.NewPod("bad")
	if err != nil {
		t.Fatal(err)
	}
	env := func(cmd string, drop ...string) map[string]string {
		e := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "bad-1", "CNI_NETNS": pod.NS.Path(),
			"CNI_IFNAME": "eth0", "CNI_PATH": node.CNIBinDir}
		for _, d := range drop {
			delete(e, d)
		}
		return e
	}
	// The same configuration pointing at a socket no daemon listens on.
	downConf := bytes.Replace(conf, []byte(filepath.Join(node.RunDir, "cni.sock")), []byte(filepath.Join(t.TempDir(), "cni.sock")), 1)

	cases := []struct {
		name  string
		env   map[string]string
		stdin []byte
		code  uint
		msg   string
	}{
		{"missing CNI_COMMAND", env("", "CNI_COMMAND"), conf, 4, "CNI_COMMAND is not set"},
		{"missing CNI_NETNS", env("ADD", "CNI_NETNS"), conf, 4, "CNI_NETNS is not set"},
		{"missing CNI_CONTAINERID", env("ADD", "CNI_CONTAINERID"), conf, 4, "CNI_CONTAINERID is not set"},
		{"unparsable stdin", env("ADD"), []byte(`{"cniVersion": "1.1.0",`), 6, "not valid JSON"},
		{"unsupported cniVersion", env("ADD"), bytes.Replace(conf, []byte(`"1.1.0"`), []byte(`"0.2.0"`), 1), 1, `cniVersion "0.2.0" is not supported`},
		{"10 MB of stdin", env("ADD"), append(bytes.TrimSuffix(conf, []byte("}")), []byte(`,"pad":"`+strings.Repeat("x", 10<<20)+`"}`)...), 7, "too large"},
		{"netns does not exist", map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad-2", "CNI_NETNS": "/run/netns/nodenet-no-such-ns", "CNI_IFNAME": "eth0"}, conf, 4, "CNI_NETNS is not usable"},
		{"netns is a regular file", map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad-3", "CNI_NETNS": node.ConfigPath, "CNI_IFNAME": "eth0"}, conf, 4, "is not a namespace"},
		{"netns is a mount namespace", map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad-4", "CNI_NETNS": "/proc/self/ns/mnt", "CNI_IFNAME": "eth0"}, conf, 4, "is not a network namespace"},
		{"daemon not running", env("ADD"), downConf, 11, "not reachable"},
		{"daemon not running, STATUS", env("STATUS"), downConf, 50, "not reachable"},
		{"CHECK of an unknown container", env("CHECK"), conf, 3, "unknown container"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := runShim(t, node, tc.env, tc.stdin)
			if code != tc.code || !strings.Contains(msg, tc.msg) {
				t.Errorf("got code %d %q, want code %d containing %q", code, msg, tc.code, tc.msg)
			}
			if v := podVeths(t, node); len(v) != 0 {
				t.Errorf("veths left behind: %v", v)
			}
		})
	}

	t.Run("exhausted range", func(t *testing.T) {
		var pods []*lab.Pod
		for i := range 5 {
			pods = append(pods, addPod(t, l, rt, "full"+string(rune('a'+i))))
		}
		extra, err := l.NewPod("fullx")
		if err != nil {
			t.Fatal(err)
		}
		err = rt.Add(t.Context(), extra)
		if err == nil || !strings.Contains(err.Error(), "10.244.1.0/29") {
			t.Fatalf("sixth ADD in a /29: got %v, want an error naming the range 10.244.1.0/29", err)
		}
		if v := podVeths(t, node); len(v) != 5 {
			t.Errorf("after the failed ADD there are %d veths, want the 5 of the running pods", len(v))
		}
		// Releasing one pod makes room again.
		if err := rt.Del(t.Context(), pods[0]); err != nil {
			t.Fatal(err)
		}
		if err := rt.Add(t.Context(), extra); err != nil {
			t.Errorf("ADD after a DEL freed an address: %v", err)
		}
	})
}

// pluginConf returns nodenet's plugin entry of the conflist as a runtime would send it on stdin.
func pluginConf(t *testing.T, conflist []byte, version string) []byte {
	t.Helper()
	var list struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(conflist, &list); err != nil {
		t.Fatal(err)
	}
	p := list.Plugins[0]
	p["name"], p["cniVersion"] = list.Name, version
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runShim executes the installed shim with exactly env and stdin and returns the CNI error code
// and message it printed (0, "" on success).
func runShim(t *testing.T, n *lab.Node, env map[string]string, stdin []byte) (uint, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(n.CNIBinDir, "nodenet-cni"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	slices.Sort(cmd.Env)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	if err == nil {
		return 0, ""
	}
	var e struct {
		Code    uint   `json:"code"`
		Msg     string `json:"msg"`
		Details string `json:"details"`
	}
	if jerr := json.Unmarshal(out, &e); jerr != nil {
		t.Fatalf("shim failed (%v) without CNI error JSON on stdout: %q", err, out)
	}
	return e.Code, e.Msg + ": " + e.Details
}
