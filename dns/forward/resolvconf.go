package forward

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// dnsPort is where resolv.conf nameservers listen: the file has no port
// syntax.
const dnsPort = 53

// UpstreamsFromResolvConf reads the nameservers of a resolv.conf file (the
// node's /etc/resolv.conf when dns.upstreams is empty), in the file's order.
//
// It leaves out what would send queries back to this node: the addresses the
// node-local cache listens on (self), loopback stub resolvers
// (systemd-resolved's 127.0.0.53, a dnsmasq on 127.0.0.1: pods cannot reach
// them, and on the node they may forward to us) and the unspecified address,
// which glibc reads as "this host". Lines glibc would ignore are ignored. It
// fails, naming what was left out and why, when no nameserver remains.
func UpstreamsFromResolvConf(path string, self []netip.Addr) ([]netip.AddrPort, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read nameservers: %w", err)
	}
	defer f.Close()

	var ups []netip.AddrPort
	var skipped []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		addr, err := netip.ParseAddr(fields[1])
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%q is not an IP address", fields[1]))
			continue
		}
		addr = addr.Unmap()
		if why := unusableUpstream(addr, self); why != "" {
			skipped = append(skipped, fmt.Sprintf("%s is %s", addr, why))
			continue
		}
		ap := netip.AddrPortFrom(addr, dnsPort)
		if !slices.Contains(ups, ap) {
			ups = append(ups, ap)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read nameservers from %s: %w", path, err)
	}
	if len(ups) == 0 {
		if len(skipped) == 0 {
			return nil, fmt.Errorf("%s lists no nameserver; set dns.upstreams", path)
		}
		return nil, fmt.Errorf("%s lists no nameserver to forward to (%s); set dns.upstreams, or on a node with systemd-resolved point the daemon at /run/systemd/resolve/resolv.conf",
			path, strings.Join(skipped, "; "))
	}
	return ups, nil
}

// unusableUpstream says why addr must not be forwarded to, or "" if it may.
func unusableUpstream(addr netip.Addr, self []netip.Addr) string {
	switch {
	case slices.ContainsFunc(self, func(s netip.Addr) bool { return s.Unmap() == addr }):
		return "this node-local DNS cache itself"
	case addr.IsLoopback():
		return "a loopback stub resolver"
	case addr.IsUnspecified():
		return "the unspecified address, meaning this host"
	}
	return ""
}
