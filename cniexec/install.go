package cniexec

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/nodenet/nodenet/cniexec/shim"
	"github.com/nodenet/nodenet/cniexec/wire"
)

// ShimName is the plugin type in the conflist and the binary's name in cni.binDir.
const ShimName = "nodenet-cni"

// ConflistName is the file the daemon writes into cni.confDir. Its "10-" prefix sorts it before
// the usual "99-loopback" and after nothing a node normally has, so runtimes pick it.
const ConflistName = "10-nodenet.conflist"

// InstallShim copies the shim binary at src into binDir. The copy goes to a temporary file in the
// same directory, is synced and then renamed over the old binary, so a runtime executing the shim
// while it is replaced runs either the old or the new file, never a partial one. An identical
// binary with mode 0755 is left alone.
func InstallShim(src, binDir string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read shim: %w", err)
	}
	dst := filepath.Join(binDir, ShimName)
	// The mode counts as well: identical bytes without the execute bit fail every runtime exec.
	if fi, err := os.Stat(dst); err == nil && fi.Mode() == 0o755 {
		if old, err := os.ReadFile(dst); err == nil && sha256.Sum256(old) == sha256.Sum256(data) {
			return nil
		}
	}
	return writeAtomic(dst, data, 0o755)
}

// LoopbackAction is what InstallLoopback did about the loopback plugin in cni.binDir.
type LoopbackAction string

const (
	// LoopbackCreated: there was none; the link to nodenet-cni was made.
	LoopbackCreated LoopbackAction = "linked to nodenet-cni"
	// LoopbackKept: the link to nodenet-cni was there already.
	LoopbackKept LoopbackAction = "already linked to nodenet-cni"
	// LoopbackReplaced: a symlink to a file of binDir that does not exist, which no runtime can
	// execute, was replaced by the link to nodenet-cni.
	LoopbackReplaced LoopbackAction = "dangling link replaced by a link to nodenet-cni"
	// LoopbackForeign: another loopback plugin is installed (a file, or a symlink elsewhere) and
	// was left alone.
	LoopbackForeign LoopbackAction = "another plugin left alone"
)

// LoopbackInstall reports what InstallLoopback found and did.
type LoopbackInstall struct {
	Path   string // <binDir>/loopback
	Action LoopbackAction
	// Found describes what was there before: "nothing", "regular file", "symlink to X"...
	Found string
}

// InstallLoopback makes sure cni.binDir has a CNI loopback plugin: container runtimes run it for
// every pod sandbox, and nodenet-cni serves as one when executed under that name. It links
// <binDir>/loopback to nodenet-cni (a relative link, so it resolves wherever binDir is mounted)
// only where no plugin exists: a loopback plugin installed by the node's distribution or its
// administrator, a file or a symlink pointing elsewhere, is never replaced. The one exception is
// a symlink to a missing file of binDir itself, which is missing on the node as well and which no
// runtime can execute. Call it after InstallShim.
func InstallLoopback(binDir string) (LoopbackInstall, error) {
	dst := filepath.Join(binDir, shim.LoopbackName)
	res, err := installLoopback(binDir, dst)
	res.Path = dst
	return res, err
}

func installLoopback(binDir, dst string) (LoopbackInstall, error) {
	// A second look only when something appeared between the look and the link.
	for range 2 {
		fi, err := os.Lstat(dst)
		if errors.Is(err, os.ErrNotExist) {
			// symlink(2) creates the link whole or not at all, and fails rather than replace a
			// plugin installed in the meantime.
			err := os.Symlink(ShimName, dst)
			if errors.Is(err, os.ErrExist) {
				continue
			}
			if err != nil {
				return LoopbackInstall{}, fmt.Errorf("link %s to %s: %w", dst, ShimName, err)
			}
			return LoopbackInstall{Action: LoopbackCreated, Found: "nothing"}, syncDir(binDir)
		}
		if err != nil {
			return LoopbackInstall{}, fmt.Errorf("inspect %s: %w", dst, err)
		}
		return installLoopbackOver(binDir, dst, fi)
	}
	return LoopbackInstall{}, fmt.Errorf("link %s to %s: %w", dst, ShimName, os.ErrExist)
}

// installLoopbackOver decides about an existing loopback plugin at dst.
func installLoopbackOver(binDir, dst string, fi os.FileInfo) (LoopbackInstall, error) {
	switch {
	case fi.Mode().IsRegular():
		return LoopbackInstall{Action: LoopbackForeign, Found: "regular file"}, nil
	case fi.IsDir():
		return LoopbackInstall{Action: LoopbackForeign, Found: "directory"}, nil
	case fi.Mode()&os.ModeSymlink == 0:
		return LoopbackInstall{Action: LoopbackForeign, Found: "special file"}, nil
	}
	target, err := os.Readlink(dst)
	if err != nil {
		return LoopbackInstall{}, fmt.Errorf("read link %s: %w", dst, err)
	}
	found := "symlink to " + target
	if filepath.Clean(target) == ShimName {
		return LoopbackInstall{Action: LoopbackKept, Found: found}, nil
	}
	// Where a link elsewhere points is judged from the daemon's mount namespace, which may not see
	// the node's file (an absolute target outside the mounted binDir): such links are left alone.
	// A target inside binDir itself is the same file on the node and here.
	if strings.ContainsRune(filepath.Clean(target), filepath.Separator) {
		if _, err := os.Stat(dst); errors.Is(err, os.ErrNotExist) {
			found += " (missing as seen from here)"
		}
		return LoopbackInstall{Action: LoopbackForeign, Found: found}, nil
	}
	if _, err := os.Lstat(filepath.Join(binDir, target)); !errors.Is(err, os.ErrNotExist) {
		return LoopbackInstall{Action: LoopbackForeign, Found: found}, nil
	}
	if err := replaceWithLink(binDir, dst, ShimName); err != nil {
		return LoopbackInstall{}, err
	}
	return LoopbackInstall{Action: LoopbackReplaced, Found: found + " (missing)"}, nil
}

// replaceWithLink puts a symlink to target at dst: made under a temporary name, then renamed over
// dst, so dst is at every instant the old link or the new one. (Whatever is at dst when the
// rename happens is replaced; the caller has just seen a dangling link there.)
func replaceWithLink(dir, dst, target string) error {
	var tmp string
	for attempt := 0; ; attempt++ {
		tmp = filepath.Join(dir, "."+filepath.Base(dst)+".tmp-"+strconv.FormatUint(rand.Uint64(), 36))
		err := os.Symlink(target, tmp)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || attempt == 9 {
			return fmt.Errorf("create temporary link in %s: %w", dir, err)
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return errors.Join(fmt.Errorf("rename into %s: %w", dst, err), os.Remove(tmp))
	}
	return syncDir(dir)
}

// syncDir fsyncs dir so that a rename or a new entry in it survives a power loss.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Conflist is the network configuration list handed to the runtime.
func Conflist(networkName, socket, logFile string) ([]byte, error) {
	list := map[string]any{
		"cniVersion":  wire.SupportedVersions[len(wire.SupportedVersions)-1],
		"cniVersions": wire.SupportedVersions,
		"name":        networkName,
		"disableGC":   false,
		"plugins": []any{map[string]any{
			"type":    ShimName,
			"socket":  socket,
			"logFile": logFile,
			// Runtimes then pass a pod's hostPort mappings as runtimeConfig.portMappings.
			"capabilities": map[string]bool{wire.CapabilityPortMappings: true},
		}},
	}
	return json.MarshalIndent(list, "", "  ")
}

// WriteConflist writes the conflist atomically into confDir; an unchanged file is not rewritten
// so the runtime's file watcher sees no event.
func WriteConflist(confDir string, data []byte) error {
	dst := filepath.Join(confDir, ConflistName)
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return writeAtomic(dst, data, 0o644)
}

// writeAtomic writes through a temporary file in the target's directory, fsyncs it, renames it
// into place and fsyncs the directory so the rename survives a power loss.
func writeAtomic(dst string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := writeTemp(dir, "."+filepath.Base(dst)+".tmp-*", data, mode)
	if tmp != "" {
		defer os.Remove(tmp) // no-op after the rename; removes the temporary file on failure
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("rename into %s: %w", dst, err)
	}
	return syncDir(dir)
}

// writeTemp creates a temporary file in dir holding data with mode, synced and closed. It returns
// the file's name whenever the file was created, also with an error.
func writeTemp(dir, pattern string, data []byte, mode os.FileMode) (string, error) {
	// A child forked by another goroutine (os/exec) while the file is open for writing inherits
	// the descriptor until its own execve; if the file has been renamed into place by then,
	// executing it fails with ETXTBSY (golang/go#22315). Forks hold ForkLock for writing until
	// their vfork child has exec'd, so holding it for reading keeps every fork away from the
	// descriptor. It delays this process's forks by one write and fsync.
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	tmp, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", fmt.Errorf("create temporary file in %s: %w", dir, err)
	}
	if _, err := io.Copy(tmp, bytes.NewReader(data)); err != nil {
		tmp.Close()
		return tmp.Name(), fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return tmp.Name(), fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return tmp.Name(), fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return tmp.Name(), fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	return tmp.Name(), nil
}
