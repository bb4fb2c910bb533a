package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// pauseSource is the pause program (package pause beside this file). Build compiles this copy
// rather than the package by import path, so it works from any directory, inside this module or
// not, with nothing but a Go toolchain on PATH.
//
//go:embed pause/main.go
var pauseSource []byte

// pauseSum names the pause binary for the cache key without compiling it: its source and the Go
// release this builder was compiled with, which is as a rule the one on PATH.
func pauseSum() string {
	h := sha256.New()
	h.Write(pauseSource)
	h.Write([]byte(runtime.Version()))
	return "pause-source:" + hex.EncodeToString(h.Sum(nil))
}

// buildPause compiles the pause program, static, for linux/amd64, to out.
func buildPause(ctx context.Context, out string) error {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build pause: no Go toolchain on PATH: %w", err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(out), "pause-src-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	files := map[string][]byte{
		"main.go": pauseSource,
		// A module of its own, with no requirements, so no module download can happen.
		"go.mod": []byte("module pause\n\ngo 1.22\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = dir
	// GOFLAGS is cleared so that a caller's -mod=vendor or similar does not reach this module.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=",
		"GOWORK=off", "GOTOOLCHAIN=local")
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build pause: %w: %s", err, strings.TrimSpace(output.String()))
	}
	return nil
}
