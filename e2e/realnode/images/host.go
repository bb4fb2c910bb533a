package images

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// This file copies files out of this machine's Debian installation, each at the path it has on
// the host, with every symlink met on the way.

// maxLinkHops bounds symlink resolution, as the kernel's ELOOP does.
const maxLinkHops = 40

// mirror adds the host file at hostPath to t at the same path, reproducing each symlink met on
// the way — directory links such as Debian's /lib -> usr/lib as much as file links — and then
// what it points to. Paths baked into binaries (the loader /lib64/ld-linux-x86-64.so.2) and
// absolute link targets then resolve in the image as they do on the host.
func (t *tree) mirror(hostPath string) error {
	todo := path.Clean(hostPath)
	for hops := 0; ; hops++ {
		if hops > maxLinkHops {
			return fmt.Errorf("mirror %s: too many symlinks", hostPath)
		}
		next, err := t.mirrorStep(todo)
		if err != nil {
			return fmt.Errorf("mirror %s: %w", hostPath, err)
		}
		if next == "" {
			return nil
		}
		todo = next
	}
}

// mirrorStep walks p from the root. At the first symlink it adds the link and returns the path
// with the link replaced by its target, for the caller to walk again; otherwise it adds the
// file or directory at p and returns "".
func (t *tree) mirrorStep(p string) (string, error) {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for i, part := range parts {
		cur = path.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err != nil {
			return "", err
		}
		last := i == len(parts)-1
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(cur)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(target, "/etc/alternatives/") {
				// Debian's alternatives are host configuration, not part of any program: link
				// straight to the file the host has chosen.
				if target, err = filepath.EvalSymlinks(cur); err != nil {
					return "", err
				}
			}
			if err := t.symlink(cur, target); err != nil {
				return "", err
			}
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(cur), target)
			}
			return path.Join(append([]string{target}, parts[i+1:]...)...), nil
		case fi.IsDir():
			if last {
				return "", t.dir(cur, fi.Mode().Perm())
			}
		case fi.Mode().IsRegular() && last:
			return "", t.copyFile(cur, cur)
		default:
			return "", fmt.Errorf("%s: unsupported file type %v", cur, fi.Mode().Type())
		}
	}
	return "", nil
}
