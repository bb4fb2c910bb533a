package realnode

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// createCgroupRoots makes the node's cgroup root in every hierarchy: kubelet's cgroupRoot, under
// which it and runc put every pod and container of the node, apart from the other nodes.
func (n *Node) createCgroupRoots(hs []hierarchy) error {
	for _, h := range hs {
		dir := filepath.Join(h.mountPoint, n.CgroupRoot)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		n.cgroupDirs = append(n.cgroupDirs, dir)
		if strings.Contains(","+h.options+",", ",cpuset,") {
			// A new cpuset cgroup starts with no CPUs and no memory nodes; give it the parent's.
			for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
				value, err := os.ReadFile(filepath.Join(h.mountPoint, file))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, file), value, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// cgroupPIDs lists every process in the node's cgroup trees: its pods' containers, whatever
// mount namespace they have.
func (n *Node) cgroupPIDs() []int {
	var pids []int
	for _, root := range n.cgroupDirs {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil // a cgroup removed while walking is not an error here
			}
			data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupRoots removes the node's cgroup trees, deepest first; the processes in them must
// have ended.
func (n *Node) removeCgroupRoots() error {
	var errs []error
	for _, root := range n.cgroupDirs {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
