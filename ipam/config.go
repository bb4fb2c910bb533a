package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
)

// Config says where the allocator keeps its state and which ranges it hands
// addresses out of.
type Config struct {
	// StateDir is an absolute directory; the database is <StateDir>/ipam.db.
	// It is created with mode 0700 if missing.
	StateDir string
	// Ranges are the node's podCIDRs, IPv4 and/or IPv6. When both families
	// are present every allocation gets one address of each (dual-stack).
	Ranges []netip.Prefix
}

// Request asks for the addresses of one pod interface.
type Request struct {
	// ContainerID and IfName identify the allocation: there is at most one
	// per pair, so a retried ADD gets the same addresses back.
	ContainerID, IfName string
	// Netns is the path of the pod's network namespace. It is stored so that
	// reconciliation can release allocations whose namespace is gone.
	Netns string
}

// minHostBits is the smallest range that leaves an address for a pod: a /30
// keeps one after network, gateway and broadcast, a /126 two after the
// subnet-router anycast and the gateway.
const minHostBits = 2

func (c Config) validate() error {
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("stateDir %q: must be an absolute path", c.StateDir)
	}
	if len(c.Ranges) == 0 {
		return errors.New("ranges: at least one range is required")
	}
	for i, r := range c.Ranges {
		switch {
		case !r.IsValid():
			return fmt.Errorf("range %d: invalid prefix", i)
		case r.Addr().Is4In6():
			return fmt.Errorf("range %s: IPv4-mapped IPv6 is not supported, use the IPv4 form", r)
		case r != r.Masked():
			return fmt.Errorf("range %s: host bits are set (did you mean %s?)", r, r.Masked())
		case r.Addr().BitLen()-r.Bits() < minHostBits:
			return fmt.Errorf("range %s: too small for pods (IPv4 needs at least /30, IPv6 at least /126)", r)
		}
		for _, prev := range c.Ranges[:i] {
			if prev.Overlaps(r) {
				return fmt.Errorf("ranges %s and %s overlap", prev, r)
			}
		}
	}
	return nil
}

// keyOf returns the database key of an allocation. NUL cannot occur in
// either part, so the key splits back unambiguously and sorts like
// (containerID, ifName).
func keyOf(containerID, ifName string) (string, error) {
	switch {
	case containerID == "":
		return "", errors.New("container id is empty")
	case ifName == "":
		return "", errors.New("interface name is empty")
	case strings.ContainsRune(containerID, 0) || strings.ContainsRune(ifName, 0):
		return "", errors.New("container id or interface name contains NUL")
	}
	return containerID + "\x00" + ifName, nil
}

// keyName is a key as people write it, containerID/ifName.
func keyName(key string) string {
	return strings.Replace(key, "\x00", "/", 1)
}
