package cniexec

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/nodenet/nodenet/routing"
)

// Reconcile runs once at start, before the daemon reports ready. It adopts what a previous daemon
// left (the bridge, veths and hostPort mappings stay, so running pods keep their traffic),
// releases allocations whose network namespace is gone (a DEL that never reached us, or an ADD cut
// short by a crash after the pod was removed), and removes veths and hostPort mappings that belong
// to no allocation.
func (s *Server) Reconcile() error {
	// The server already answers the shim while this runs (a runtime that still has the previous
	// daemon's conflist sends ADDs at once), so every container lock is held, in index order, for
	// the whole comparison. Without them a pod whose ADD allocated after List and attached before
	// PodVeths has its fresh veth taken for an orphan and removed.
	for i := range s.locks {
		s.locks[i].Lock()
		defer s.locks[i].Unlock()
	}
	var errs []error
	owned := map[string]bool{}
	for _, a := range s.ipam.List() {
		if !netnsGone(a.Netns) {
			owned[routing.HostVethName(a.ContainerID, a.IfName)] = true
			continue
		}
		if err := s.release(a.ContainerID, a.IfName); err != nil {
			errs = append(errs, fmt.Errorf("release container %s interface %s: %w", a.ContainerID, a.IfName, err))
			continue
		}
		s.log.Info("released allocation whose netns is gone", zap.String("containerID", a.ContainerID),
			zap.String("ifName", a.IfName), zap.String("netns", a.Netns), zap.Stringers("ips", a.IPs))
	}
	if s.cfg.HostPorts != nil {
		live := map[routing.Attachment][]netip.Addr{}
		for _, a := range s.ipam.List() {
			live[routing.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}] = addrsOf(a.IPs)
		}
		// Keeps the mappings of the pods that remain, removes the others.
		if err := s.cfg.HostPorts.Adopt(live); err != nil {
			errs = append(errs, fmt.Errorf("adopt hostPort mappings: %w", err))
		}
	}
	veths, err := s.pods.PodVeths()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list pod veths: %w", err))...)
	}
	for _, v := range veths {
		if owned[v] {
			continue
		}
		if err := s.pods.DetachPod(v); err != nil {
			errs = append(errs, fmt.Errorf("remove orphan veth %s: %w", v, err))
			continue
		}
		s.log.Info("removed veth without allocation", zap.String("hostVeth", v))
	}
	return errors.Join(errs...)
}

// netnsGone reports whether the namespace at path certainly no longer exists: the file is missing
// while its directory is visible. When the directory itself is not visible (the runtime's netns
// directory is not mounted into the daemon's container) nothing can be concluded, and releasing
// live pods' addresses on such a guess would be far worse than keeping a stale one until GC.
func netnsGone(path string) bool {
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	_, err := os.Stat(filepath.Dir(path))
	return err == nil
}
