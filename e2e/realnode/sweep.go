package realnode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// createdDirsFile lists, in a node's directory, the mount points the node created on the host,
// so that Sweep can remove them after a run that could not clean up.
const createdDirsFile = "created-dirs"

// Sweep removes what a cluster with this prefix left behind when its process was killed before
// Close ran: every process in its network namespaces or its nodes' cgroups (found by namespace
// and cgroup, so only the cluster's own), the cgroups, the namespaces, the mount points it
// created and its scratch directories. A cluster that closed cleanly leaves nothing to find.
func Sweep(prefix string) error {
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	netns := map[uint64]string{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join("/run/netns", e.Name()), &st); err == nil {
				netns[st.Ino] = e.Name()
			}
		}
	}
	hs, err := hostHierarchies()
	if err != nil {
		return err
	}
	var cgroupRoots []string
	for _, h := range hs {
		matches, _ := filepath.Glob(filepath.Join(h.mountPoint, "nodenet-"+prefix+"-*"))
		cgroupRoots = append(cgroupRoots, matches...)
	}
	leftover := &Node{cgroupDirs: cgroupRoots}
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := append(leftover.cgroupPIDs(), pidsInNetworkNamespaces(netns)...)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sweep %s: processes %v still running after 30s", prefix, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL) // gone already is fine
		}
		time.Sleep(100 * time.Millisecond)
	}
	errs := []error{leftover.removeCgroupRoots()}
	for _, name := range netns {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns delete %s: %w: %s", name, err, strings.TrimSpace(string(out))))
		}
	}
	labDirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "nodenet-lab-"+prefix+"-*"))
	for _, dir := range labDirs {
		lists, _ := filepath.Glob(filepath.Join(dir, "*", createdDirsFile))
		for _, list := range lists {
			data, err := os.ReadFile(list)
			if err != nil {
				continue
			}
			created := strings.Fields(string(data))
			slices.Reverse(created)
			for _, d := range created {
				_ = os.Remove(d) // only if empty, as at Close
			}
		}
		errs = append(errs, os.RemoveAll(dir))
	}
	return errors.Join(errs...)
}

// pidsInNetworkNamespaces lists the processes (but this one) in any of the namespaces, by inode.
func pidsInNetworkNamespaces(netns map[uint64]string) []int {
	if len(netns) == 0 {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil {
			if _, ok := netns[st.Ino]; ok {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
