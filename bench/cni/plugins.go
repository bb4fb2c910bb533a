package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// pluginsModule is the module of the reference plugins. Its version is the one hack/tools/go.mod
// requires (the tools module pins it with `tool` lines), so a bump there rebuilds the cache.
const pluginsModule = "github.com/containernetworking/plugins"

// referencePlugins are the binaries the reference conflist needs, by CNI type.
var referencePlugins = map[string]string{
	"bridge":     pluginsModule + "/plugins/main/bridge",
	"host-local": pluginsModule + "/plugins/ipam/host-local",
}

// cacheRoot is $NODENET_CACHE, else ~/.cache/nodenet, as in the Makefile.
func cacheRoot() (string, error) {
	if dir := os.Getenv("NODENET_CACHE"); dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the build cache: set NODENET_CACHE: %w", err)
	}
	return filepath.Join(home, ".cache", "nodenet"), nil
}

// ensureReferencePlugins returns a directory holding the reference plugins built from the tools
// module at toolsDir, building them into the cache on first use. They are built with the flags
// of nodenet's own binaries (static, trimmed, stripped) so exec costs compare like for like.
func ensureReferencePlugins(ctx context.Context, toolsDir string, progress io.Writer) (dir, version string, err error) {
	version, err = goOutput(ctx, toolsDir, "list", "-m", "-f", "{{.Version}}", pluginsModule)
	if err != nil {
		return "", "", fmt.Errorf("find the version of %s in %s: %w", pluginsModule, toolsDir, err)
	}
	root, err := cacheRoot()
	if err != nil {
		return "", "", err
	}
	dir = filepath.Join(root, "cni-plugins-"+version)
	if havePlugins(dir) {
		fmt.Fprintf(progress, "reference plugins %s: cached in %s\n", version, dir)
		return dir, version, nil
	}
	fmt.Fprintf(progress, "reference plugins %s: building bridge and host-local into %s (first use only)...\n", version, dir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", "", err
	}
	// Build into a temporary directory and rename it into place, so an interrupted build never
	// leaves a half-filled cache that a later run would trust.
	tmp, err := os.MkdirTemp(root, ".cni-plugins-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", tmp + string(os.PathSeparator)}
	for _, pkg := range referencePlugins {
		args = append(args, pkg)
	}
	if _, err := goOutput(ctx, toolsDir, args...); err != nil {
		return "", "", fmt.Errorf("build reference plugins: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", "", err
	}
	fmt.Fprintf(progress, "reference plugins %s: built\n", version)
	return dir, version, nil
}

func havePlugins(dir string) bool {
	for name := range referencePlugins {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// goOutput runs the go command in dir with cgo off and returns its trimmed stdout.
func goOutput(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}
