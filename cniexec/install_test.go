package cniexec_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"

	"github.com/nodenet/nodenet/cniexec"
	"github.com/nodenet/nodenet/cniexec/wire"
)

// installFileID identifies the file behind a name: a rewrite through a temporary file and rename
// always yields a new inode, so an unchanged inode proves the file was left alone.
type installFileID struct {
	Ino     uint64
	ModTime time.Time
	Mode    os.FileMode
}

func installStat(t *testing.T, path string) installFileID {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	return installFileID{Ino: fi.Sys().(*syscall.Stat_t).Ino, ModTime: fi.ModTime(), Mode: fi.Mode()}
}

// installDirNames lists dir, so leftover temporary files show up in a diff.
// checkAtomicWrite checks one step of repeated installs of dst: the content and mode, that an
// identical write left the file alone and a changed one replaced it by rename (new inode), and
// that no temporary file is left in the directory. It returns the file's identity for the next step.
func checkAtomicWrite(t *testing.T, dst, wantContent string, wantMode os.FileMode, hasPrev, wantSame bool, prev installFileID) installFileID {
	t.Helper()
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantContent, string(got)); diff != "" {
		t.Errorf("%s content (-want +got):\n%s", filepath.Base(dst), diff)
	}
	id := installStat(t, dst)
	if id.Mode != wantMode {
		t.Errorf("mode = %v, want %v", id.Mode, wantMode)
	}
	if hasPrev {
		if wantSame && id != prev {
			t.Errorf("identical %s was rewritten: %+v, was %+v", filepath.Base(dst), id, prev)
		}
		if !wantSame && id.Ino == prev.Ino {
			t.Errorf("%s written in place (inode %d kept), want a new file renamed over it", filepath.Base(dst), id.Ino)
		}
	}
	if diff := cmp.Diff([]string{filepath.Base(dst)}, installDirNames(t, filepath.Dir(dst))); diff != "" {
		t.Errorf("%s entries (-want +got):\n%s", filepath.Dir(dst), diff)
	}
	return id
}

func installDirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read dir: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func installWriteFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInstallShim(t *testing.T) {
	src := t.TempDir()
	v1 := filepath.Join(src, "v1")
	v2 := filepath.Join(src, "v2")
	installWriteFile(t, v1, []byte("#!/bin/sh\necho v1\n"))
	installWriteFile(t, v2, []byte("#!/bin/sh\necho v2\n"))
	// binDir does not exist yet, as on a fresh node.
	binDir := filepath.Join(t.TempDir(), "opt", "cni", "bin")
	dst := filepath.Join(binDir, "nodenet-cni")

	steps := []struct {
		name        string
		src         string
		wantContent string
		wantSame    bool // the previous file is left in place
	}{
		{name: "first install", src: v1, wantContent: "#!/bin/sh\necho v1\n"},
		{name: "identical binary", src: v1, wantContent: "#!/bin/sh\necho v1\n", wantSame: true},
		{name: "new binary", src: v2, wantContent: "#!/bin/sh\necho v2\n"},
		{name: "identical again", src: v2, wantContent: "#!/bin/sh\necho v2\n", wantSame: true},
		{name: "back to the old binary", src: v1, wantContent: "#!/bin/sh\necho v1\n"},
	}
	var prev installFileID
	for i, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := cniexec.InstallShim(s.src, binDir); err != nil {
				t.Fatalf("InstallShim: %v", err)
			}
			prev = checkAtomicWrite(t, dst, s.wantContent, 0o755, i > 0, s.wantSame, prev)
		})
	}
}

func TestInstallShimFixesMode(t *testing.T) {
	// A copy with the right bytes but not executable (cp without -p, a hand-made fix) would fail
	// every runtime exec; it must be replaced, not left alone as "identical".
	tests := []struct {
		name string
		mode os.FileMode
	}{
		{name: "not executable", mode: 0o600},
		{name: "world writable", mode: 0o777},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "shim")
			installWriteFile(t, src, []byte("binary"))
			binDir := t.TempDir()
			dst := filepath.Join(binDir, "nodenet-cni")
			installWriteFile(t, dst, []byte("binary"))
			if err := os.Chmod(dst, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := cniexec.InstallShim(src, binDir); err != nil {
				t.Fatalf("InstallShim: %v", err)
			}
			if got := installStat(t, dst).Mode; got != 0o755 {
				t.Errorf("mode = %v, want -rwxr-xr-x", got)
			}
		})
	}
}

func TestInstallShimErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	err := cniexec.InstallShim(missing, dir)
	want := "read shim: open " + missing + ": no such file or directory"
	if err == nil || err.Error() != want {
		t.Errorf("InstallShim(missing) = %v, want %q", err, want)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("InstallShim(missing) = %v, want it to wrap os.ErrNotExist", err)
	}
	if diff := cmp.Diff([]string(nil), installDirNames(t, dir)); diff != "" {
		t.Errorf("dir entries after a failed install (-want +got):\n%s", diff)
	}
}

func TestConflist(t *testing.T) {
	data, err := cniexec.Conflist("nodenet", "/run/nodenet-b/cni.sock", "/run/nodenet-b/cni.log")
	if err != nil {
		t.Fatalf("Conflist: %v", err)
	}
	const golden = `{
  "cniVersion": "1.1.0",
  "cniVersions": [
    "0.3.1",
    "0.4.0",
    "1.0.0",
    "1.1.0"
  ],
  "disableGC": false,
  "name": "nodenet",
  "plugins": [
    {
      "capabilities": {
        "portMappings": true
      },
      "logFile": "/run/nodenet-b/cni.log",
      "socket": "/run/nodenet-b/cni.sock",
      "type": "nodenet-cni"
    }
  ]
}`
	if diff := cmp.Diff(golden, string(data)); diff != "" {
		t.Errorf("Conflist (-want +got):\n%s", diff)
	}

	// What a runtime makes of it.
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("ConfListFromBytes: %v", err)
	}
	type plugin struct {
		Type         string
		Capabilities map[string]bool
		Conf         wire.PluginConf
	}
	type parsed struct {
		Name, CNIVersion string
		DisableGC        bool
		Plugins          []plugin
	}
	got := parsed{Name: list.Name, CNIVersion: list.CNIVersion, DisableGC: list.DisableGC}
	for _, p := range list.Plugins {
		var conf wire.PluginConf
		if err := json.Unmarshal(p.Bytes, &conf); err != nil {
			t.Fatalf("plugin bytes: %v", err)
		}
		got.Plugins = append(got.Plugins, plugin{Type: p.Network.Type, Capabilities: p.Network.Capabilities, Conf: conf})
	}
	want := parsed{
		Name:       "nodenet",
		CNIVersion: "1.1.0",
		Plugins: []plugin{{
			Type: "nodenet-cni",
			// The runtime passes runtimeConfig.portMappings to plugins that ask for them.
			Capabilities: map[string]bool{"portMappings": true},
			// The list's name and version are injected into each plugin's config only when libcni
			// invokes it; what the file holds for the plugin is the shim's own keys.
			Conf: wire.PluginConf{Type: "nodenet-cni", Socket: "/run/nodenet-b/cni.sock", LogFile: "/run/nodenet-b/cni.log"},
		}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parsed by libcni (-want +got):\n%s", diff)
	}
}

func TestWriteConflist(t *testing.T) {
	confDir := filepath.Join(t.TempDir(), "etc", "cni", "net.d")
	dst := filepath.Join(confDir, "10-nodenet.conflist")
	first, err := cniexec.Conflist("nodenet", "/run/nodenet/cni.sock", "/run/nodenet/cni.log")
	if err != nil {
		t.Fatal(err)
	}
	second, err := cniexec.Conflist("nodenet", "/run/nodenet-b/cni.sock", "/run/nodenet-b/cni.log")
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name     string
		data     []byte
		wantSame bool
	}{
		{name: "first write", data: first},
		{name: "identical content", data: first, wantSame: true},
		{name: "changed content", data: second},
		{name: "identical again", data: second, wantSame: true},
	}
	var prev installFileID
	for i, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := cniexec.WriteConflist(confDir, s.data); err != nil {
				t.Fatalf("WriteConflist: %v", err)
			}
			prev = checkAtomicWrite(t, dst, string(s.data), 0o644, i > 0, s.wantSame, prev)
			// The runtime looks the network up by name in confDir.
			list, err := libcni.LoadNetworkConf(confDir, "nodenet")
			if err != nil {
				t.Fatalf("LoadNetworkConf: %v", err)
			}
			if list.Name != "nodenet" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "nodenet-cni" {
				t.Errorf("LoadNetworkConf = name %q, %d plugins; want nodenet with one nodenet-cni", list.Name, len(list.Plugins))
			}
		})
	}
}

// installBuildTiny builds a static Go program that prints want, and a second variant of it with
// bytes appended: the ELF loader ignores trailing data, so both run and print the same thing, but
// their contents differ and InstallShim replaces one with the other.
func installBuildTiny(t *testing.T, want string) (a, b string) {
	t.Helper()
	dir := t.TempDir()
	installWriteFile(t, filepath.Join(dir, "go.mod"), []byte("module tiny\n\ngo 1.26\n"))
	installWriteFile(t, filepath.Join(dir, "main.go"), []byte(fmt.Sprintf(
		"package main\n\nimport \"os\"\n\nfunc main() { os.Stdout.WriteString(%q) }\n", want)))
	a = filepath.Join(dir, "a")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", a, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	b = filepath.Join(dir, "b")
	if err := os.WriteFile(b, append(data, bytes.Repeat([]byte("nodenet trailer "), 4096)...), 0o755); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// TestInstallShimWhileExecuting replaces the shim over and over while other goroutines execute
// it, as a runtime may during a daemon upgrade. Every execution must run a whole binary: no
// ETXTBSY, no exec format error, no truncated file.
func TestInstallShimWhileExecuting(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program and runs it for seconds")
	}
	const want = "nodenet tiny shim\n"
	a, b := installBuildTiny(t, want)
	binDir := t.TempDir()
	if err := cniexec.InstallShim(a, binDir); err != nil {
		t.Fatalf("InstallShim: %v", err)
	}
	dst := filepath.Join(binDir, "nodenet-cni")

	// Bounded by time and by count; the minimum makes sure replacements overlap executions even
	// on a slow machine, the maximum that the test ends on a fast one.
	const (
		runners     = 4
		minExecs    = 20
		maxExecs    = 2000
		maxInstalls = 20000
	)
	deadline := time.Now().Add(2 * time.Second)

	var (
		mu       sync.Mutex
		failed   int
		failures []string // the first few, for the report
		execs    int
		installs int
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failed++
		if len(failures) < 10 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}

	stop := make(chan struct{}) // closed when every runner is done; stops the installer
	var installer sync.WaitGroup
	installer.Add(1)
	go func() {
		defer installer.Done()
		srcs := [2]string{b, a}
		for i := 0; i < maxInstalls; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := cniexec.InstallShim(srcs[i%2], binDir); err != nil {
				fail("install %d: %v", i, err)
				return
			}
			mu.Lock()
			installs++
			mu.Unlock()
		}
	}()

	var wg sync.WaitGroup
	for r := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < maxExecs && (n < minExecs || time.Now().Before(deadline)); n++ {
				out, err := exec.Command(dst).Output()
				if err != nil {
					fail("runner %d exec %d: %v (stdout %q)", r, n, err, out)
					continue
				}
				if string(out) != want {
					fail("runner %d exec %d: stdout %q, want %q", r, n, out, want)
				}
				mu.Lock()
				execs++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	installer.Wait()

	t.Logf("%d executions during %d installs", execs, installs)
	if failed > 0 {
		t.Errorf("%d failures, first ones:\n%s", failed, failureLines(failures))
	}
	if installs < 2 {
		t.Errorf("only %d installs ran alongside the executions; the test proved nothing", installs)
	}
	if diff := cmp.Diff([]string{"nodenet-cni"}, installDirNames(t, binDir)); diff != "" {
		t.Errorf("binDir entries (-want +got):\n%s", diff)
	}
}

func failureLines(lines []string) string {
	var buf bytes.Buffer
	for _, l := range lines {
		buf.WriteString("  " + l + "\n")
	}
	return buf.String()
}

// installLinkState is what a loopback test sees at <binDir>/loopback: a symlink's target or a
// file's content, and its inode, which changes when the entry is replaced.
type installLinkState struct {
	Link    string // symlink target; "" for anything else
	Content string // regular file content
	Dir     bool
	Ino     uint64
}

func installLinkStat(t *testing.T, path string) installLinkState {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("lstat: %v", err)
	}
	s := installLinkState{Ino: fi.Sys().(*syscall.Stat_t).Ino, Dir: fi.IsDir()}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		if s.Link, err = os.Readlink(path); err != nil {
			t.Fatal(err)
		}
	case fi.Mode().IsRegular():
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s.Content = string(data)
	}
	return s
}

func TestInstallLoopback(t *testing.T) {
	elsewhere := filepath.Join(t.TempDir(), "usr-lib-cni-loopback")
	installWriteFile(t, elsewhere, []byte("reference loopback"))
	symlink := func(target string) func(t *testing.T, binDir string) {
		return func(t *testing.T, binDir string) {
			if err := os.Symlink(target, filepath.Join(binDir, "loopback")); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name      string
		setup     func(t *testing.T, binDir string) // before the install; nil for an empty binDir
		want      cniexec.LoopbackInstall           // Path is filled in by the test
		wantLink  string                            // loopback's target afterwards; "" for "left as it was"
		wantNames []string                          // binDir's entries afterwards
	}{
		{
			name:      "none",
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackCreated, Found: "nothing"},
			wantLink:  "nodenet-cni",
			wantNames: []string{"loopback", "nodenet-cni"},
		},
		{
			name:      "ours",
			setup:     symlink("nodenet-cni"),
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackKept, Found: "symlink to nodenet-cni"},
			wantNames: []string{"loopback", "nodenet-cni"},
		},
		{
			name:      "ours spelt differently",
			setup:     symlink("./nodenet-cni"),
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackKept, Found: "symlink to ./nodenet-cni"},
			wantNames: []string{"loopback", "nodenet-cni"},
		},
		{
			name: "regular file",
			setup: func(t *testing.T, binDir string) {
				installWriteFile(t, filepath.Join(binDir, "loopback"), []byte("reference loopback"))
			},
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackForeign, Found: "regular file"},
			wantNames: []string{"loopback", "nodenet-cni"},
		},
		{
			name: "directory",
			setup: func(t *testing.T, binDir string) {
				if err := os.Mkdir(filepath.Join(binDir, "loopback"), 0o755); err != nil {
					t.Fatal(err)
				}
			},
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackForeign, Found: "directory"},
			wantNames: []string{"loopback", "nodenet-cni"},
		},
		{
			name:      "symlink elsewhere",
			setup:     symlink(elsewhere),
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackForeign, Found: "symlink to " + elsewhere},
			wantNames: []string{"loopback", "nodenet-cni"},
		},
		{
			// The daemon may not see the node's /usr/lib: the link may work there.
			name:  "symlink elsewhere, missing here",
			setup: symlink("/nonexistent/nodenet-test/loopback"),
			want: cniexec.LoopbackInstall{Action: cniexec.LoopbackForeign,
				Found: "symlink to /nonexistent/nodenet-test/loopback (missing as seen from here)"},
			wantNames: []string{"loopback", "nodenet-cni"},
		},
		{
			name: "symlink to another file of binDir",
			setup: func(t *testing.T, binDir string) {
				installWriteFile(t, filepath.Join(binDir, "loopback-1.9.0"), []byte("reference loopback"))
				symlink("loopback-1.9.0")(t, binDir)
			},
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackForeign, Found: "symlink to loopback-1.9.0"},
			wantNames: []string{"loopback", "loopback-1.9.0", "nodenet-cni"},
		},
		{
			// A link to a file of binDir that is gone is gone on the node too: nothing can run it.
			name:      "dangling symlink within binDir",
			setup:     symlink("loopback-1.9.0"),
			want:      cniexec.LoopbackInstall{Action: cniexec.LoopbackReplaced, Found: "symlink to loopback-1.9.0 (missing)"},
			wantLink:  "nodenet-cni",
			wantNames: []string{"loopback", "nodenet-cni"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			binDir := t.TempDir()
			installWriteFile(t, filepath.Join(binDir, "nodenet-cni"), []byte("shim"))
			dst := filepath.Join(binDir, "loopback")
			if tt.setup != nil {
				tt.setup(t, binDir)
			}
			var before installLinkState
			if tt.setup != nil {
				before = installLinkStat(t, dst)
			}

			got, err := cniexec.InstallLoopback(binDir)
			if err != nil {
				t.Fatalf("InstallLoopback: %v", err)
			}
			want := tt.want
			want.Path = dst
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("InstallLoopback (-want +got):\n%s", diff)
			}
			after := installLinkStat(t, dst)
			if tt.wantLink == "" {
				if diff := cmp.Diff(before, after); diff != "" {
					t.Errorf("loopback was changed (-before +after):\n%s", diff)
				}
			} else {
				if after.Link != tt.wantLink {
					t.Errorf("loopback links to %q, want %q", after.Link, tt.wantLink)
				}
				if data, err := os.ReadFile(dst); err != nil || string(data) != "shim" {
					t.Errorf("reading through the link: %q, %v; want the shim", data, err)
				}
			}
			if diff := cmp.Diff(tt.wantNames, installDirNames(t, binDir)); diff != "" {
				t.Errorf("binDir entries (-want +got):\n%s", diff)
			}

			// A second start finds what the first left and changes nothing.
			again, err := cniexec.InstallLoopback(binDir)
			if err != nil {
				t.Fatalf("second InstallLoopback: %v", err)
			}
			if tt.wantLink != "" && again.Action != cniexec.LoopbackKept {
				t.Errorf("second InstallLoopback: %+v, want %q", again, cniexec.LoopbackKept)
			}
			if diff := cmp.Diff(after, installLinkStat(t, dst)); diff != "" {
				t.Errorf("second InstallLoopback changed loopback (-before +after):\n%s", diff)
			}
		})
	}
	if data, err := os.ReadFile(elsewhere); err != nil || string(data) != "reference loopback" {
		t.Errorf("the plugin a link pointed to: %q, %v; want it untouched", data, err)
	}
}

func TestInstallLoopbackErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := cniexec.InstallLoopback(missing)
	want := "link " + missing + "/loopback to nodenet-cni: symlink nodenet-cni " + missing + "/loopback: no such file or directory"
	if err == nil || err.Error() != want {
		t.Errorf("InstallLoopback(missing dir) = %v, want %q", err, want)
	}
}
