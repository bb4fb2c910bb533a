package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nodenet/nodenet/e2e/lab"
)

// side is one CNI implementation under test: a lab node, the runtime that drives it through
// libcni, and the pods it networks.
type side struct {
	name string
	node *lab.Node
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	exec *netnsExec
	// plugins are the binaries an ADD executes, for the process-start floor.
	plugins []string
	// pods are created up front; the first opts.pods take part in every timed phase.
	pods []*lab.Pod
	// daemon is set for nodenet: RSS and the daemon's own request timings are read from it.
	daemon bool
}

func (s *side) close() error {
	if s.exec == nil {
		return nil
	}
	return s.exec.Close()
}

// newNodenetSide starts a lab node running `nodenet daemon` and drives the conflist the daemon
// wrote. The daemon logs at info, its default, rather than the lab's debug.
func newNodenetSide(ctx context.Context, l *lab.Lab) (*side, error) {
	node, err := l.AddNode(lab.NodeOptions{Name: "nn", Index: 1, Config: map[string]any{
		"logging": map[string]any{"level": "info", "format": "json"},
	}})
	if err != nil {
		return nil, err
	}
	if err := node.Start(); err != nil {
		return nil, err
	}
	if err := node.WaitReady(ctx); err != nil {
		return nil, err
	}
	if err := checkDaemonPID(node.PID()); err != nil {
		return nil, err
	}
	list, err := libcni.LoadNetworkConf(node.ConfDir, "nodenet")
	if err != nil {
		return nil, fmt.Errorf("load the conflist the daemon wrote: %w", err)
	}
	ex, err := newNetnsExec(node.NS.Path())
	if err != nil {
		return nil, err
	}
	return &side{
		name: "nodenet", node: node, exec: ex, daemon: true, list: list,
		cni:     libcni.NewCNIConfigWithCacheDir([]string{node.CNIBinDir}, filepath.Join(node.Dir, "cni-cache"), ex),
		plugins: []string{filepath.Join(node.CNIBinDir, "nodenet-cni")},
	}, nil
}

// newReferenceSide creates a lab node without a daemon and drives the reference bridge +
// host-local plugins in it with a conflist like the ones kubeadm guides and kind-era clusters
// use. cniVersion is the one of nodenet's conflist, so libcni takes the same path for both.
func newReferenceSide(l *lab.Lab, pluginDir, cniVersion string) (*side, error) {
	node, err := l.AddNode(lab.NodeOptions{Name: "ref", Index: 2})
	if err != nil {
		return nil, err
	}
	conflist, err := json.MarshalIndent(map[string]any{
		"cniVersion": cniVersion,
		"name":       "reference",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      "cni0",
			"isGateway":   true,
			"ipMasq":      true,
			"hairpinMode": true,
			// Pinned so the run does not depend on whether an iptables binary happens to be
			// installed; nodenet masquerades with nftables too.
			"ipMasqBackend": "nftables",
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": node.PodCIDRs[0]}}},
				"dataDir": filepath.Join(node.Dir, "host-local"),
			},
		}},
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(node.ConfDir, 0o755); err != nil {
		return nil, err
	}
	// Kept beside the node for anyone reading the lab directory while the benchmark runs.
	if err := os.WriteFile(filepath.Join(node.ConfDir, "10-reference.conflist"), conflist, 0o644); err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return nil, fmt.Errorf("reference conflist: %w", err)
	}
	ex, err := newNetnsExec(node.NS.Path())
	if err != nil {
		return nil, err
	}
	return &side{
		name: "reference", node: node, exec: ex, list: list,
		cni:     libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, filepath.Join(node.Dir, "cni-cache"), ex),
		plugins: []string{filepath.Join(pluginDir, "bridge"), filepath.Join(pluginDir, "host-local")},
	}, nil
}

// runtimeConf is what containerd passes for a pod sandbox. IgnoreUnknown=1 matters: without it
// the reference plugins refuse the K8S_* arguments.
func runtimeConf(p *lab.Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NS.Path(),
		IfName:      p.IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
	}
}

// add runs ADD and checks the pod got exactly one address.
func (s *side) add(ctx context.Context, p *lab.Pod) error {
	res, err := s.cni.AddNetworkList(ctx, s.list, runtimeConf(p))
	if err != nil {
		return fmt.Errorf("ADD %s: %w", p.Name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("ADD %s: convert result: %w", p.Name, err)
	}
	if len(r.IPs) != 1 {
		return fmt.Errorf("ADD %s: got addresses %v, want one", p.Name, r.IPs)
	}
	return nil
}

// del runs DEL.
func (s *side) del(ctx context.Context, p *lab.Pod) error {
	if err := s.cni.DelNetworkList(ctx, s.list, runtimeConf(p)); err != nil {
		return fmt.Errorf("DEL %s: %w", p.Name, err)
	}
	return nil
}

// checkDaemonPID makes sure the PID the lab reports is the daemon itself (`ip netns exec`
// replaces itself with it), so the RSS read is the daemon's.
func checkDaemonPID(pid int) error {
	if pid == 0 {
		return errors.New("daemon is not running")
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return fmt.Errorf("daemon pid %d: %w", pid, err)
	}
	if c := strings.TrimSpace(string(comm)); c != "nodenet" {
		return fmt.Errorf("daemon pid %d runs %q, not nodenet", pid, c)
	}
	return nil
}

// memory is a process's resident set in bytes: now, at its peak, and now split into anonymous
// memory (heap, stacks) and file-backed pages (the mapped binary, the mmapped IPAM database).
type memory struct{ rss, hwm, anon, file int64 }

// readMemory reads VmRSS, VmHWM, RssAnon and RssFile from /proc/PID/status.
func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	fields := map[string]*int64{"VmRSS": &m.rss, "VmHWM": &m.hwm, "RssAnon": &m.anon, "RssFile": &m.file}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		dst := fields[key]
		if !ok || dst == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return memory{}, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
		*dst = kb << 10
	}
	if err := sc.Err(); err != nil {
		return memory{}, err
	}
	if m.rss == 0 {
		return memory{}, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
	}
	return m, nil
}

// requestTotals are the daemon's nodenet_cni_request_duration_seconds sum and count by command.
type requestTotals map[string]struct{ sum, count float64 }

// daemonTotals scrapes the daemon's metrics endpoint from inside the node's namespace.
func (s *side) daemonTotals(ctx context.Context) (requestTotals, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return s.node.NS.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9310/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape daemon metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape daemon metrics: %s", resp.Status)
	}
	totals := requestTotals{}
	const metric = "nodenet_cni_request_duration_seconds"
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, "{")
		if !ok || (name != metric+"_sum" && name != metric+"_count") {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		command, found := strings.CutPrefix(labels, `command="`)
		if !ok || !found {
			continue
		}
		command = strings.TrimSuffix(command, `"`)
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("metric line %q: %w", line, err)
		}
		t := totals[command]
		if strings.HasSuffix(name, "_sum") {
			t.sum = v
		} else {
			t.count = v
		}
		totals[command] = t
	}
	return totals, sc.Err()
}

// meanSince is the mean time per command between two scrapes.
func (t requestTotals) meanSince(before requestTotals, command string) float64 {
	n := t[command].count - before[command].count
	if n <= 0 {
		return 0
	}
	return (t[command].sum - before[command].sum) / n
}
