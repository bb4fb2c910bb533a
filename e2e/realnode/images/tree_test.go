package images

import (
	"archive/tar"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// typeNames are the entry types as listing writes them.
var typeNames = map[byte]string{tar.TypeDir: "dir", tar.TypeReg: "file", tar.TypeSymlink: "link"}

// listing renders t's own entries one a line, "path type mode [-> link] [< src | data]", in
// the order the tar gets them: the golden form of the tree tests.
func listing(t *tree) string {
	var b strings.Builder
	for _, p := range t.paths() {
		e := t.entries[p]
		fmt.Fprintf(&b, "%s %s %o", p, typeNames[e.typ], e.mode)
		switch {
		case e.typ == tar.TypeSymlink:
			fmt.Fprintf(&b, " -> %s", e.link)
		case e.src != "":
			fmt.Fprintf(&b, " < %s", e.src)
		case e.typ == tar.TypeReg:
			fmt.Fprintf(&b, " %q", e.data)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestTreeAdd(t *testing.T) {
	base := newTree("base", nil)
	for _, err := range []error{
		base.symlink("/bin", "usr/bin"),
		base.file("/usr/bin/dash", []byte("dash"), 0o755),
		base.file("/etc/hosts", []byte("hosts"), 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	upper := newTree("upper", base)
	tests := []struct {
		name    string
		add     func() error
		wantErr string // substring; "" for success
	}{
		{"new file makes its parents", func() error { return upper.file("/a/b/c", []byte("c"), 0o644) }, ""},
		{"same as base adds nothing", func() error { return upper.file("/usr/bin/dash", []byte("dash"), 0o755) }, ""},
		{"same dir again", func() error { return upper.dir("/a", 0o755) }, ""},
		{"differs from base", func() error { return upper.file("/etc/hosts", []byte("other"), 0o644) }, "conflicts"},
		{"dir over file", func() error { return upper.dir("/a/b/c", 0o755) }, "conflicts"},
		{"through a symlink", func() error { return upper.file("/bin/sh", []byte("sh"), 0o755) }, "not a directory"},
		{"under a file", func() error { return upper.file("/a/b/c/d", nil, 0o644) }, "not a directory"},
		{"relative path", func() error { return upper.file("a", nil, 0o644) }, "clean absolute"},
		{"unclean path", func() error { return upper.file("/a/../b", nil, 0o644) }, "clean absolute"},
	}
	for _, tt := range tests {
		err := tt.add()
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: error %v, want one with %q", tt.name, err, tt.wantErr)
		}
	}
	want := `/a dir 755
/a/b dir 755
/a/b/c file 644 "c"
`
	if diff := cmp.Diff(want, listing(upper)); diff != "" {
		t.Errorf("upper layer (-want +got):\n%s", diff)
	}
}

// TestMirror copies host paths through a directory link and relative and absolute file links,
// in a directory standing in for the host root.
func TestMirror(t *testing.T) {
	root := t.TempDir()
	mk := func(p string, data string) {
		t.Helper()
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(target, p string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	mk("usr/lib/libc.so.6", "libc")
	mk("usr/lib/libfoo.so.1.2", "foo")
	ln("usr/lib", "lib")                       // merged /usr, relative
	ln("libfoo.so.1.2", "usr/lib/libfoo.so.1") // soname link, relative
	ln(root+"/lib/libc.so.6", "usr/lib/ld.so") // absolute, through the /lib link
	tr := newTree("test", nil)
	for _, p := range []string{"lib/libfoo.so.1", "usr/lib/ld.so"} {
		if err := tr.mirror(filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	// The temporary root's own directories come first; the rest mirrors the layout above.
	var got []string
	for _, line := range strings.Split(strings.TrimSuffix(listing(tr), "\n"), "\n") {
		if strings.HasPrefix(line, root+"/") {
			got = append(got, strings.ReplaceAll(strings.TrimPrefix(line, root), root, "ROOT"))
		}
	}
	want := []string{
		"/lib link 777 -> usr/lib",
		"/usr dir 755",
		"/usr/lib dir 755",
		"/usr/lib/ld.so link 777 -> ROOT/lib/libc.so.6",
		"/usr/lib/libc.so.6 file 755 < ROOT/usr/lib/libc.so.6",
		"/usr/lib/libfoo.so.1 link 777 -> libfoo.so.1.2",
		"/usr/lib/libfoo.so.1.2 file 755 < ROOT/usr/lib/libfoo.so.1.2",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mirrored (-want +got):\n%s", diff)
	}
}

// TestSharedObjectsOfHostPrograms: a Debian program's closure holds libc and the loader, a
// static one and a script have none, and for the heaviest programs the closure holds every
// library ldd — the host's own loader — reports.
func TestSharedObjectsOfHostPrograms(t *testing.T) {
	requireDebianPackages(t)
	for _, name := range []string{"dash", "dig", "curl", "socat", "ip", "ps"} {
		prog := lookTool(name)
		libs, err := sharedObjects([]string{prog})
		if err != nil {
			t.Fatal(err)
		}
		if !linksLibc(libs) || !slices.Contains(libs, "/lib64/ld-linux-x86-64.so.2") {
			t.Errorf("%s: closure lacks libc or the loader: %v", name, libs)
		}
		real := map[string]bool{}
		for _, l := range libs {
			r, err := filepath.EvalSymlinks(l)
			if err != nil {
				t.Fatal(err)
			}
			real[r] = true
		}
		out, err := exec.Command("ldd", prog).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", prog, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
			f := strings.Fields(line)
			lib := ""
			switch {
			case len(f) >= 3 && f[1] == "=>":
				lib = f[2]
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				lib = f[0]
			default:
				continue // the vDSO
			}
			r, err := filepath.EvalSymlinks(lib)
			if err != nil {
				t.Fatal(err)
			}
			if !real[r] {
				t.Errorf("%s: ldd reports %s, missing from %v", name, lib, libs)
			}
		}
	}
	for _, p := range []string{busyboxFile.path, lookTool("egrep")} {
		libs, err := sharedObjects([]string{p})
		if err != nil || len(libs) != 0 {
			t.Errorf("%s: shared objects %v, %v; want none", p, libs, err)
		}
	}
}
