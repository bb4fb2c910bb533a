// Package nstest holds the helpers kernel tests share: the root rule, fresh network namespaces
// removed when the test ends, and handles inside them. Only tests import it.
package nstest

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot stops a test that needs root: it fails in CI, where tests run as root and a silent
// skip would hide the kernel tests, and skips elsewhere.
func RequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("test needs root, and CI runs as root")
	}
	t.Skip("test needs root")
}

// RequireTool returns the path of a command the test runs, with the same rule as RequireRoot.
func RequireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("test needs %s installed: %v", name, err)
	}
	t.Skipf("test needs %s: %v", name, err)
	return ""
}

// NewNS creates a named network namespace (under /run/netns, so `ip netns exec` finds it) and
// removes it when the test ends, whatever happens.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close netns: %v", err)
		}
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("remove netns: %v", err)
		}
	})
	return n
}

// IPNetns is a network namespace made with `ip netns add`, as operators and some runtimes make
// them: a bind mount at Path under /run/netns. Unlike NewNS's, the test may delete it itself, to
// see what a plugin does once the namespace is gone.
type IPNetns struct {
	Name string
	Path string
	ip   string
}

// NewIPNetns creates an IPNetns with a name of its own and deletes it when the test ends, whatever
// happens, unless the test has deleted it already.
func NewIPNetns(t *testing.T) *IPNetns {
	t.Helper()
	RequireRoot(t)
	n := &IPNetns{ip: RequireTool(t, "ip"), Name: "nodenet-test-" + strings.ToLower(rand.Text()[:12])}
	n.Path = filepath.Join("/run/netns", n.Name)
	if out, err := exec.Command(n.ip, "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", n.Name, err, out)
	}
	t.Cleanup(func() {
		if _, err := os.Lstat(n.Path); errors.Is(err, os.ErrNotExist) {
			return
		}
		if out, err := exec.Command(n.ip, "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", n.Name, err, out)
		}
	})
	return n
}

// Delete deletes the namespace now, as a runtime does when it tears a sandbox down.
func (n *IPNetns) Delete(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(n.ip, "netns", "del", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v\n%s", n.Name, err, out)
	}
}

// Exec runs a command inside the namespace (`ip netns exec`).
func (n *IPNetns) Exec(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(n.ip, append([]string{"netns", "exec", n.Name, name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
}

// NetlinkHandle is a netlink handle inside n, closed when the test ends.
func NetlinkHandle(t testing.TB, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// NFTConn is an nftables connection inside n.
func NFTConn(t testing.TB, n ns.NetNS) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatalf("nftables conn: %v", err)
	}
	return c
}

// Serve listens on addr inside n and answers each TCP connection with the line reply(conn)
// returns, then closes it; the listener stops when the test ends. Tests use it to see which
// backend a connection reached and what source address it arrived with.
func Serve(t *testing.T, n ns.NetNS, addr string, reply func(net.Conn) string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			fmt.Fprintln(c, reply(c))
			c.Close()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln
}

// AskLine connects from inside n to a server started by Serve and returns the line it answered,
// trimmed; timeout bounds the connect and the read.
func AskLine(n ns.NetNS, addr string, timeout time.Duration) (string, error) {
	var line string
	err := n.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(line), err
}
