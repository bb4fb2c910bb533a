package images

import (
	"archive/tar"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// libDirs are where the dynamic loader looks for libraries without an ld.so.cache: Debian's
// multiarch directories and the plain ones.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"}

// checkClosure fails t for every dynamic ELF file in files whose loader or needed library the
// image lacks: the image would fail to start that program with "not found".
func checkClosure(t *testing.T, files map[string]*file) {
	t.Helper()
	checked := 0
	for p, f := range files {
		if f.elf == nil || f.elf.interp == "" {
			continue
		}
		checked++
		if _, lf := resolve(files, f.elf.interp); lf == nil || lf.typ != tar.TypeReg {
			t.Errorf("%s: loader %s not in the image", p, f.elf.interp)
		}
		for _, lib := range f.elf.needed {
			found := false
			for _, d := range libDirs {
				if _, lf := resolve(files, path.Join(d, lib)); lf != nil && lf.typ == tar.TypeReg {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("%s: needs %s, not in the image", p, lib)
			}
		}
	}
	if checked == 0 {
		t.Error("no dynamic ELF file in the image")
	}
}

// want is what one path of an image must be.
type want struct {
	path    string
	target  string // the path it resolves to, when it is a link; "" for itself
	typ     byte   // of what it resolves to
	mode    int64  // of what it resolves to; 0 for any
	content string // substring of a small regular file's content
}

func checkFiles(t *testing.T, files map[string]*file, wants []want) {
	t.Helper()
	for _, w := range wants {
		got, f := resolve(files, w.path)
		if f == nil {
			t.Errorf("%s: missing or dangling", w.path)
			continue
		}
		wantPath := w.target
		if wantPath == "" {
			wantPath = w.path
		}
		if got != wantPath {
			t.Errorf("%s resolves to %s, want %s", w.path, got, wantPath)
		}
		if f.typ != w.typ {
			t.Errorf("%s: type %c, want %c", w.path, f.typ, w.typ)
		}
		if w.mode != 0 && f.mode != w.mode {
			t.Errorf("%s: mode %o, want %o", w.path, f.mode, w.mode)
		}
		if w.content != "" && !strings.Contains(string(f.data), w.content) {
			t.Errorf("%s: no %q in %q", w.path, w.content, f.data)
		}
	}
}

// checkNoHostLeaks fails t for links into Debian's alternatives (host configuration) and for
// paths naming the test's own input directory.
func checkNoHostLeaks(t *testing.T, files map[string]*file, inputDir string) {
	t.Helper()
	for p, f := range files {
		if strings.HasPrefix(f.link, "/etc/alternatives") {
			t.Errorf("%s links into the host's alternatives: %s", p, f.link)
		}
		if strings.Contains(p, inputDir) || strings.Contains(f.link, inputDir) {
			t.Errorf("%s names the build's input directory", p)
		}
	}
}

const reg, dir, exe = tar.TypeReg, tar.TypeDir, 0o755

func TestAgnhostImage(t *testing.T) {
	opts, archive, _ := sharedArchive(t)
	files := flatten(t, readImage(t, archive, AgnhostRef))
	checkFiles(t, files, []want{
		{path: "/agnhost", typ: reg, mode: exe},
		{path: "/agnhost-2", target: "/agnhost", typ: reg},
		{path: "/uploads", typ: dir},
		{path: "/localhost.crt", typ: reg, content: "BEGIN CERTIFICATE"},
		{path: "/localhost.key", typ: reg, content: "BEGIN PRIVATE KEY"},
		// The shell and the e2e suite's network tools.
		{path: "/bin/sh", target: "/usr/bin/dash", typ: reg, mode: exe},
		{path: "/bin/bash", target: "/usr/bin/bash", typ: reg},
		{path: "/usr/bin/nc", target: "/usr/bin/nc.openbsd", typ: reg},
		{path: "/usr/bin/awk", target: "/usr/bin/mawk", typ: reg},
		{path: "/usr/bin/dig", typ: reg},
		{path: "/usr/bin/nslookup", typ: reg},
		{path: "/usr/bin/host", typ: reg},
		{path: "/usr/bin/curl", typ: reg},
		{path: "/usr/bin/socat", typ: reg},
		{path: "/usr/bin/getent", typ: reg},
		{path: "/usr/bin/ss", typ: reg},
		{path: "/usr/bin/ps", typ: reg},
		{path: "/usr/bin/tar", typ: reg},
		{path: "/usr/bin/[", typ: reg},
		{path: "/usr/bin/timeout", typ: reg},
		// The loader, libc and the name service.
		{path: "/lib64/ld-linux-x86-64.so.2", target: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", typ: reg},
		{path: "/lib/x86_64-linux-gnu/libc.so.6", target: "/usr/lib/x86_64-linux-gnu/libc.so.6", typ: reg},
		{path: "/lib/x86_64-linux-gnu/libnss_files.so.2", target: "/usr/lib/x86_64-linux-gnu/libnss_files.so.2", typ: reg},
		{path: "/lib/x86_64-linux-gnu/libnss_dns.so.2", target: "/usr/lib/x86_64-linux-gnu/libnss_dns.so.2", typ: reg},
		{path: "/etc/nsswitch.conf", typ: reg, content: "hosts: files dns"},
		{path: "/etc/hosts", typ: reg, content: "localhost"},
		{path: "/etc/passwd", typ: reg, content: "nobody:x:65534:65534:"},
		{path: "/etc/passwd", typ: reg, content: "root:x:0:0:"},
		{path: "/etc/passwd", typ: reg, content: "user-defined-in-image:x:1000:"},
		{path: "/etc/group", typ: reg, content: "group-defined-in-image:x:50000:user-defined-in-image"},
		{path: "/tmp", typ: dir, mode: 0o1777},
		{path: "/root", typ: dir, mode: 0o700},
	})
	checkClosure(t, files)
	checkNoHostLeaks(t, files, filepath.Dir(opts.AgnhostPath))
	// ip is where the host has it: /usr/bin on Debian bookworm, /usr/sbin elsewhere.
	if ip := lookTool("ip"); ip != "" && files[ip] == nil {
		t.Errorf("ip: %s not in the image", ip)
	}
}

func TestGlibcDNSTestingImage(t *testing.T) {
	_, archive, _ := sharedArchive(t)
	files := flatten(t, readImage(t, archive, GlibcDNSTestingRef))
	// What test/e2e/network/dns_common.go's probe loop runs, with sh.
	checkFiles(t, files, []want{
		{path: "/bin/sh", target: "/usr/bin/dash", typ: reg},
		{path: "/bin/bash", target: "/usr/bin/bash", typ: reg},
		{path: "/usr/bin/dig", typ: reg},
		{path: "/usr/bin/getent", typ: reg},
		{path: "/usr/bin/seq", typ: reg},
		{path: "/usr/bin/test", typ: reg},
		{path: "/usr/bin/sleep", typ: reg},
	})
	if files["/agnhost"] != nil {
		t.Error("glibc-dns-testing has agnhost's layer")
	}
	checkClosure(t, files)
}

func TestBusyboxImage(t *testing.T) {
	_, archive, _ := sharedArchive(t)
	files := flatten(t, readImage(t, archive, BusyboxRef))
	checkFiles(t, files, []want{
		{path: "/bin/busybox", typ: reg, mode: exe},
		{path: "/bin/sh", target: "/usr/bin/dash", typ: reg, mode: exe},
		{path: "/bin/ls", target: "/bin/busybox", typ: reg},
		{path: "/bin/wget", target: "/bin/busybox", typ: reg},
		{path: "/bin/nc", target: "/bin/busybox", typ: reg},
		{path: "/bin/sleep", target: "/bin/busybox", typ: reg},
		{path: "/lib64/ld-linux-x86-64.so.2", target: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", typ: reg},
		{path: "/tmp", typ: dir, mode: 0o1777},
		{path: "/etc/passwd", typ: reg, content: "root:x:0:0:"},
	})
	if f := files["/bin"]; f == nil || f.typ != dir {
		t.Error("/bin is not a directory: the applets must be in it")
	}
	checkClosure(t, files)
}

func TestNginxImage(t *testing.T) {
	_, archive, _ := sharedArchive(t)
	files := flatten(t, readImage(t, archive, NginxRef))
	checkFiles(t, files, []want{
		{path: "/usr/sbin/nginx", typ: reg, mode: exe},
		{path: "/docker-entrypoint.sh", typ: reg, mode: exe, content: `exec "$@"`},
		{path: "/etc/nginx/nginx.conf", typ: reg, content: "include /etc/nginx/conf.d/*.conf;"},
		{path: "/etc/nginx/conf.d/default.conf", typ: reg, content: "listen 80;"},
		{path: "/etc/nginx/mime.types", typ: reg},
		{path: "/usr/share/nginx/html/index.html", typ: reg, content: "Welcome to nginx!"},
		{path: "/var/lib/nginx", typ: dir},
		{path: "/bin/sh", target: "/usr/bin/dash", typ: reg},
	})
	for p, target := range map[string]string{"/var/log/nginx/access.log": "/dev/stdout", "/var/log/nginx/error.log": "/dev/stderr"} {
		if f := files[p]; f == nil || f.typ != tar.TypeSymlink || f.link != target {
			t.Errorf("%s is not a link to %s", p, target)
		}
	}
	checkClosure(t, files)
}

func TestPauseAndNodenetImages(t *testing.T) {
	opts, archive, _ := sharedArchive(t)
	pause := flatten(t, readImage(t, archive, PauseRef))
	checkFiles(t, pause, []want{{path: "/pause", typ: reg, mode: exe}})
	if f := pause["/pause"]; f != nil && (f.elf == nil || f.elf.interp != "") {
		t.Error("/pause is not a static ELF executable")
	}
	if len(pause) != 1 {
		t.Errorf("pause holds %d files, want /pause alone", len(pause))
	}
	nodenet := flatten(t, readImage(t, archive, NodenetRef))
	checkFiles(t, nodenet, []want{
		{path: "/nodenet", typ: reg, mode: exe},
		{path: "/nodenet-cni", typ: reg, mode: exe},
	})
	for _, n := range []string{"nodenet", "nodenet-cni"} {
		fi, err := os.Stat(filepath.Join(opts.NodenetBinDir, n))
		if err != nil {
			t.Fatal(err)
		}
		if f := nodenet["/"+n]; f != nil && f.size != fi.Size() {
			t.Errorf("/%s: %d bytes, want %d", n, f.size, fi.Size())
		}
	}
}

// TestBuildCached: the same inputs give the same archive without writing it again; a changed
// input gives a new one beside it.
func TestBuildCached(t *testing.T) {
	opts, archive, _ := sharedArchive(t)
	before, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := Build(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(again)
	if err != nil {
		t.Fatal(err)
	}
	if again != archive || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("rebuild wrote %s (%v), want %s untouched (%v)", again, after.ModTime(), archive, before.ModTime())
	}

	changed := opts
	changed.NodenetBinDir = filepath.Join(t.TempDir(), "bin")
	if err := writeFakeNodenet(changed.NodenetBinDir, "v2"); err != nil {
		t.Fatal(err)
	}
	other, _, err := Build(t.Context(), changed)
	if err != nil {
		t.Fatal(err)
	}
	if other == archive {
		t.Fatalf("a changed nodenet binary gave the same archive %s", other)
	}
	for _, p := range []string{archive, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("archive gone: %v", err)
		}
	}
}

func TestPrune(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	names := []string{"e2e-images-a.tar", "e2e-images-b.tar", "e2e-images-c.tar", "e2e-images-d.tar", "other.tar"}
	for i, n := range names {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		// a is the oldest, d the newest.
		mod := now.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(p, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	// The archive kept stays whatever its age; of the others only the newest stays, and files
	// that are not archives are left alone.
	if err := prune(dir, filepath.Join(dir, "e2e-images-a.tar")); err != nil {
		t.Fatal(err)
	}
	var left []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := "e2e-images-a.tar e2e-images-d.tar other.tar"
	if got := strings.Join(left, " "); got != want {
		t.Errorf("left %s, want %s", got, want)
	}
}
