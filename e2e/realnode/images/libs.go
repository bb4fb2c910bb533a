package images

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// This file finds the shared libraries a program needs the way glibc's dynamic loader will find
// them inside the image: by DT_NEEDED name, in the object's DT_RUNPATH (or DT_RPATH), then in the
// loader's built-in directories. The images have no /etc/ld.so.cache, so a library the host
// finds only through its cache (ld.so.conf) would be missing at run time; searching as the
// image's loader will search turns that into an error here. It also spares running ldd, which
// costs a loader start per file, over a second for the userland on every Build.

// loaderDirs are the directories Debian's glibc loader searches on amd64 without a cache.
var loaderDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"}

// elfDeps is what the loader reads from one ELF file.
type elfDeps struct {
	interp   string   // PT_INTERP: the loader a program asks for; "" for libraries and static files
	needed   []string // DT_NEEDED names
	runpaths []string // DT_RUNPATH, or DT_RPATH when there is no RUNPATH, with $ORIGIN expanded
}

// readDeps returns the dependencies of the file at p, or nil if it is not an ELF file (a
// script, which needs only its interpreter, copied anyway).
func readDeps(p string) (*elfDeps, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	magic := make([]byte, len(elf.ELFMAG))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != elf.ELFMAG {
		return nil, nil
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("read ELF %s: %w", p, err)
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%s: not an x86-64 ELF file", p)
	}
	d := &elfDeps{}
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			b, err := io.ReadAll(prog.Open())
			if err != nil {
				return nil, fmt.Errorf("read interpreter of %s: %w", p, err)
			}
			d.interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if ef.Section(".dynamic") == nil {
		return d, nil // static
	}
	if d.needed, err = ef.DynString(elf.DT_NEEDED); err != nil {
		return nil, fmt.Errorf("read DT_NEEDED of %s: %w", p, err)
	}
	runpath, err := ef.DynString(elf.DT_RUNPATH)
	if err != nil {
		return nil, err
	}
	if len(runpath) == 0 {
		if runpath, err = ef.DynString(elf.DT_RPATH); err != nil {
			return nil, err
		}
	}
	origin := path.Dir(p)
	for _, rp := range runpath {
		for _, dir := range strings.Split(rp, ":") {
			dir = strings.ReplaceAll(strings.ReplaceAll(dir, "${ORIGIN}", origin), "$ORIGIN", origin)
			if dir != "" {
				d.runpaths = append(d.runpaths, dir)
			}
		}
	}
	return d, nil
}

// findLibrary returns the first x86-64 ELF file named name in dirs, as dir/name.
func findLibrary(name string, dirs []string) string {
	for _, dir := range dirs {
		p := path.Join(dir, name)
		// Like the loader, skip a file of another architecture (an i386 one in /usr/lib).
		if d, err := readDeps(p); err == nil && d != nil {
			return p
		}
	}
	return ""
}

// sharedObjects returns, sorted, the host paths of every shared object the ELF files among
// paths need, transitively, and the loaders they ask for. Non-ELF and static files add
// nothing. A library that cannot be found is an error: the image would fail at run time with
// the same complaint.
func sharedObjects(paths []string) ([]string, error) {
	seen := map[string]bool{}
	queue := append([]string(nil), paths...)
	var errs []error
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		d, err := readDeps(p)
		if err != nil {
			return nil, err
		}
		if d == nil {
			continue
		}
		var found []string
		if d.interp != "" {
			found = append(found, d.interp)
		}
		for _, name := range d.needed {
			lib := findLibrary(name, append(append([]string(nil), d.runpaths...), loaderDirs...))
			if lib == "" {
				errs = append(errs, fmt.Errorf("%s needs %s, not found in %s", p, name, strings.Join(loaderDirs, " ")))
				continue
			}
			found = append(found, lib)
		}
		for _, f := range found {
			if !seen[f] {
				seen[f] = true
				queue = append(queue, f)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	libs := make([]string, 0, len(seen))
	for p := range seen {
		libs = append(libs, p)
	}
	sort.Strings(libs)
	return libs, nil
}

// nssModules are the glibc name-service modules for the "files" and "dns" sources of
// nsswitch.conf. glibc 2.34 and later has both built in and ships these as stubs, but older
// ones load them with dlopen, which no DT_NEEDED shows; copying them costs nothing either way.
var nssModules = []string{"libnss_files.so.2", "libnss_dns.so.2"}

// linksLibc reports whether libc.so.6 is among the shared objects libs.
func linksLibc(libs []string) bool {
	for _, l := range libs {
		if path.Base(l) == "libc.so.6" {
			return true
		}
	}
	return false
}

// addPrograms mirrors the host programs at paths into t, with the libraries they need.
func (t *tree) addPrograms(paths []string) error {
	for _, p := range paths {
		if err := t.mirror(p); err != nil {
			return err
		}
	}
	return t.addLibraries(paths)
}

// addLibraries mirrors into t the shared objects the host ELF files at paths need and, if any
// of them links glibc, the NSS modules that make getent, getaddrinfo and friends read
// /etc/hosts and DNS. The files themselves may sit anywhere in the image.
func (t *tree) addLibraries(paths []string) error {
	libs, err := sharedObjects(paths)
	if err != nil {
		return err
	}
	if linksLibc(libs) {
		var mods []string
		for _, m := range nssModules {
			if p := findLibrary(m, loaderDirs); p != "" {
				mods = append(mods, p)
			}
		}
		modLibs, err := sharedObjects(mods)
		if err != nil {
			return err
		}
		libs = append(append(libs, mods...), modLibs...)
	}
	for _, p := range libs {
		if err := t.mirror(p); err != nil {
			return err
		}
	}
	return nil
}
