package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// built is the archive the tests of this package share: writing one takes seconds, reading it
// back is what each test does.
var built struct {
	once  sync.Once
	dir   string // removed by TestMain
	opts  Options
	path  string
	refs  []string
	err   error
	setup string // which step failed, for err
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		if err := os.RemoveAll(built.dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}

// sharedArchive builds the archive once for the package: a fake agnhost (the pause program,
// any static binary does), nodenet binaries from NODENET_BIN_DIR when set (as `make test` sets
// it) or small stand-ins, and a cache directory that outlives single tests.
func sharedArchive(t *testing.T) (Options, string, []string) {
	t.Helper()
	requireDebianPackages(t)
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "nodenet-images-test-")
		if err != nil {
			built.err, built.setup = err, "temp dir"
			return
		}
		built.dir = dir
		built.opts, built.err = testOptions(dir)
		if built.err != nil {
			built.setup = "inputs"
			return
		}
		built.path, built.refs, built.err = Build(context.Background(), built.opts)
		built.setup = "build"
	})
	if built.err != nil {
		t.Fatalf("%s: %v", built.setup, built.err)
	}
	return built.opts, built.path, built.refs
}

// testOptions makes Build's inputs under dir.
func testOptions(dir string) (Options, error) {
	opts := Options{
		NodenetBinDir: os.Getenv("NODENET_BIN_DIR"),
		AgnhostPath:   filepath.Join(dir, "agnhost"),
		CacheDir:      filepath.Join(dir, "cache"),
	}
	if err := buildPause(context.Background(), opts.AgnhostPath); err != nil {
		return opts, err
	}
	if opts.NodenetBinDir == "" {
		opts.NodenetBinDir = filepath.Join(dir, "bin")
		if err := writeFakeNodenet(opts.NodenetBinDir, "v1"); err != nil {
			return opts, err
		}
	}
	return opts, nil
}

// writeFakeNodenet writes stand-ins for the nodenet binaries; version varies their content.
func writeFakeNodenet(dir, version string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, n := range []string{"nodenet", "nodenet-cni"} {
		data := []byte("#!/bin/sh\necho " + n + " " + version + "\n")
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// requireDebianPackages stops a test when this machine lacks the packages Build copies from,
// failing in CI (whose setup installs them) and skipping elsewhere.
func requireDebianPackages(t *testing.T) {
	t.Helper()
	if missing := MissingPackages(); len(missing) > 0 {
		msg := "Debian packages not installed (make deps installs them): " + strings.Join(missing, " ")
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// readImage reads the image tagged ref back from the archive at p.
func readImage(t *testing.T, p, ref string) v1.Image {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.Image(func() (io.ReadCloser, error) { return os.Open(p) }, &tag)
	if err != nil {
		t.Fatalf("read %s: %v", ref, err)
	}
	return img
}

// file is one entry of an image's flattened filesystem.
type file struct {
	typ  byte
	mode int64
	link string
	size int64
	data []byte // regular files of interest only: small ones and ELF headers
	elf  *elfInfo
}

// elfInfo is what the closure check needs from a dynamic ELF file.
type elfInfo struct {
	interp string
	needed []string
}

// layerFiles caches each layer's files by digest: the userland layer under agnhost,
// glibc-dns-testing and nginx is read once for all the tests.
var layerFiles = struct {
	sync.Mutex
	m map[v1.Hash]map[string]*file
}{m: map[v1.Hash]map[string]*file{}}

// flatten returns the filesystem of img, all layers applied, by path ("/usr/bin/dash"). The
// layers have no whiteouts, so applying one is adding its files.
func flatten(t *testing.T, img v1.Image) map[string]*file {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*file{}
	for _, l := range layers {
		for p, f := range readLayer(t, l) {
			files[p] = f
		}
	}
	return files
}

func readLayer(t *testing.T, l v1.Layer) map[string]*file {
	t.Helper()
	digest, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	layerFiles.Lock()
	defer layerFiles.Unlock()
	if files, ok := layerFiles.m[digest]; ok {
		return files
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*file{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		f := &file{typ: hdr.Typeflag, mode: hdr.Mode, link: hdr.Linkname, size: hdr.Size}
		if hdr.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if len(data) < 64<<10 {
				f.data = data
			}
			f.elf = readELF(data)
		}
		files[path.Clean("/"+hdr.Name)] = f
	}
	layerFiles.m[digest] = files
	return files
}

// readELF returns the interpreter and needed libraries of a dynamic ELF file, or nil.
func readELF(data []byte) *elfInfo {
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil
	}
	defer ef.Close()
	info := &elfInfo{}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				info.interp = strings.TrimRight(string(b), "\x00")
			}
		}
	}
	info.needed, _ = ef.ImportedLibraries()
	return info
}

// resolve follows symlinks in files the way the kernel would inside the image, returning the
// final path and its file, or nil if it dangles.
func resolve(files map[string]*file, p string) (string, *file) {
	for hops := 0; hops < maxLinkHops; hops++ {
		parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
		cur, next := "/", ""
		for i, part := range parts {
			cur = path.Join(cur, part)
			f := files[cur]
			if f == nil {
				return p, nil
			}
			if f.typ == tar.TypeSymlink {
				target := f.link
				if !path.IsAbs(target) {
					target = path.Join(path.Dir(cur), target)
				}
				next = path.Join(append([]string{target}, parts[i+1:]...)...)
				break
			}
		}
		if next == "" {
			return cur, files[cur]
		}
		p = next
	}
	return p, nil
}

func TestBuildRefsAndConfigs(t *testing.T) {
	_, archive, refs := sharedArchive(t)
	want := []string{PauseRef, AgnhostRef, BusyboxRef, NginxRef, NginxNewRef, GlibcDNSTestingRef, NodenetRef}
	if diff := cmp.Diff(want, refs); diff != "" {
		t.Errorf("refs (-want +got):\n%s", diff)
	}
	path := "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	tests := []struct {
		ref  string
		want v1.Config
	}{
		{PauseRef, v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"}},
		{AgnhostRef, v1.Config{
			Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: []string{path},
			ExposedPorts: ports("80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"),
		}},
		{BusyboxRef, v1.Config{Cmd: []string{"sh"}, Env: []string{path}}},
		{NginxRef, v1.Config{
			Entrypoint: []string{"/docker-entrypoint.sh"}, Cmd: []string{"nginx", "-g", "daemon off;"},
			Env: []string{path}, ExposedPorts: ports("80/tcp"), StopSignal: "SIGQUIT",
		}},
		{GlibcDNSTestingRef, v1.Config{Cmd: []string{"bash"}, Env: []string{path}}},
		{NodenetRef, v1.Config{Entrypoint: []string{"/nodenet"}}},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			cfg, err := readImage(t, archive, tt.ref).ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.OS != "linux" || cfg.Architecture != "amd64" {
				t.Errorf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
			}
			if diff := cmp.Diff(tt.want, cfg.Config); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}

	// Both nginx tags name one image, stored once.
	d1, err := readImage(t, archive, NginxRef).Digest()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := readImage(t, archive, NginxNewRef).Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("nginx tags differ: %s and %s", d1, d2)
	}
}
