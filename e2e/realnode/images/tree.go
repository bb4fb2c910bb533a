package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path"
	"sort"
)

// entry is one file of an image's filesystem: a directory, a regular file or a symlink.
type entry struct {
	typ  byte        // tar.TypeDir, tar.TypeReg or tar.TypeSymlink
	mode os.FileMode // permission bits, plus the sticky bit for /tmp
	link string      // symlink target, as written (relative or absolute)
	src  string      // regular file: the host file copied in
	data []byte      // regular file: its content, when src is empty
	// sum stands for the content of a regular file whose src is only made when the archive is
	// built (the pause binary): the cache key hashes sum instead of reading src.
	sum string
}

func (e *entry) equal(o *entry) bool {
	return e.typ == o.typ && e.mode == o.mode && e.link == o.link && e.src == o.src &&
		bytes.Equal(e.data, o.data) && e.sum == o.sum
}

// tree is the filesystem one layer adds on top of an optional base tree (the layers below it).
// Paths are clean and absolute. Adding what the base already has, identically, adds nothing,
// so an upper layer holds only what is new; adding something different at a path that exists
// is an error, since no image here needs to override a lower layer.
type tree struct {
	name    string // what the layer is, for its history entry and errors
	base    *tree
	entries map[string]*entry
}

func newTree(name string, base *tree) *tree {
	return &tree{name: name, base: base, entries: map[string]*entry{}}
}

// get returns the entry at p in this tree or below it, or nil.
func (t *tree) get(p string) *entry {
	for ; t != nil; t = t.base {
		if e, ok := t.entries[p]; ok {
			return e
		}
	}
	return nil
}

// add puts e at p, creating missing parent directories with mode 0755. A parent that is a
// symlink is an error rather than something to follow: the caller chose the path, and a file
// written through a link would land somewhere it did not mean.
func (t *tree) add(p string, e *entry) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return fmt.Errorf("add %q: not a clean absolute path below /", p)
	}
	if dir := path.Dir(p); dir != "/" {
		switch parent := t.get(dir); {
		case parent == nil:
			if err := t.add(dir, &entry{typ: tar.TypeDir, mode: 0o755}); err != nil {
				return err
			}
		case parent.typ != tar.TypeDir:
			return fmt.Errorf("add %s: parent %s is not a directory", p, dir)
		}
	}
	if old := t.get(p); old != nil {
		if old.equal(e) {
			return nil
		}
		return fmt.Errorf("add %s: conflicts with what is already there", p)
	}
	t.entries[p] = e
	return nil
}

func (t *tree) dir(p string, mode os.FileMode) error {
	return t.add(p, &entry{typ: tar.TypeDir, mode: mode})
}

func (t *tree) file(p string, data []byte, mode os.FileMode) error {
	return t.add(p, &entry{typ: tar.TypeReg, mode: mode, data: data})
}

func (t *tree) symlink(p, target string) error {
	return t.add(p, &entry{typ: tar.TypeSymlink, mode: 0o777, link: target})
}

// copyFile puts the host's regular file src at p, with src's permission bits. Set-id bits are
// dropped: the images run as root or as a fixed user, and nothing in them needs to switch.
func (t *tree) copyFile(p, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("copy %s: not a regular file", src)
	}
	return t.add(p, &entry{typ: tar.TypeReg, mode: fi.Mode().Perm(), src: src})
}

// copyProgram puts the executable src at p with mode 0755, and fails early with its name if it
// is missing: these are the caller's build outputs, the likeliest files to be absent.
func (t *tree) copyProgram(p, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	return t.add(p, &entry{typ: tar.TypeReg, mode: 0o755, src: src})
}

// paths returns this tree's own paths (not the base's) in an order where every directory comes
// before what it holds, as tar readers that create files as they go need.
func (t *tree) paths() []string {
	ps := make([]string, 0, len(t.entries))
	for p := range t.entries {
		ps = append(ps, p)
	}
	// A parent is a prefix of its children, so it sorts first.
	sort.Strings(ps)
	return ps
}
