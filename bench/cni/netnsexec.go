package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
)

// netnsExec is libcni's plugin executor with one change: the plugin process starts inside a
// node's network namespace, as it would on a real node where the runtime lives in the node's
// namespace. The fork happens on an OS thread that has joined the namespace (ns.Do locks the
// goroutine to its thread), so the child inherits it: no wrapper process such as nsenter or
// `ip netns exec` is exec'd, and both sides of the benchmark pay exactly one fork+exec per plugin
// call, as with invoke.RawExec.
type netnsExec struct {
	version.PluginDecoder // Decode, as libcni's default executor does it
	netns                 ns.NetNS
}

var _ invoke.Exec = (*netnsExec)(nil)

func newNetnsExec(path string) (*netnsExec, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	return &netnsExec{netns: n}, nil
}

// FindInPath looks the plugin up as libcni's default executor does.
func (e *netnsExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *netnsExec) Close() error { return e.netns.Close() }

// ExecPlugin runs the plugin with stdinData and environ and returns its stdout, turning a
// failure into the CNI error the plugin printed, as invoke.RawExec does.
func (e *netnsExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdinData)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Only the fork needs the namespace; waiting can happen on any thread.
	if err := e.netns.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", pluginPath, e.netns.Path(), err)
	}
	if err := cmd.Wait(); err != nil {
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// pluginError is the CNI error a failed plugin printed on stdout, or a description of the
// failure when it printed none.
func pluginError(err error, stdout, stderr []byte) error {
	e := &types.Error{}
	switch {
	case len(stdout) > 0:
		if perr := json.Unmarshal(stdout, e); perr != nil {
			e.Msg = fmt.Sprintf("plugin failed (%v) and its output %q is not a CNI error: %v", err, stdout, perr)
		}
	case len(stderr) > 0:
		e.Msg = fmt.Sprintf("plugin failed: %v: %q", err, stderr)
	default:
		e.Msg = fmt.Sprintf("plugin failed with no message: %v", err)
	}
	return e
}
