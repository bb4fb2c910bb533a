package cniexec

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

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
