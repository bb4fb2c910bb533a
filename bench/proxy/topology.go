package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/e2e/lab"
)

// topology is what the connect-latency measure needs on one side: a client namespace and a
// backend namespace, each on its own veth to the node namespace, so every packet between them is
// routed by the node namespace and passes the proxy's rules (as pod-to-Service traffic does on a
// node). Client and backend are on different links on purpose: on one L2 segment the backend
// would answer the client directly and bypass the reverse NAT.
//
//	client 10.244.250.2/24 ── bcli 10.244.250.1 [node namespace] bsrv 10.244.251.1 ── backend 10.244.251.10-19/24 :8080
type topology struct {
	client, backend *lab.Netns
	stop            func()
}

func newTopology(l *lab.Lab, node *lab.Node) (*topology, error) {
	client, err := l.AddNetns(node.Name + "c")
	if err != nil {
		return nil, err
	}
	backend, err := l.AddNetns(node.Name + "b")
	if err != nil {
		return nil, err
	}
	link := func(peer *lab.Netns, nodeIf string, gw netip.Addr, addrs []netip.Addr) error {
		steps := [][]string{
			{"ip", "link", "add", nodeIf, "type", "veth", "peer", "name", "eth0", "netns", peer.Name},
			{"ip", "addr", "add", gw.String() + "/24", "dev", nodeIf},
			{"ip", "link", "set", nodeIf, "up"},
		}
		for _, s := range steps {
			if _, err := node.NS.Run(s...); err != nil {
				return err
			}
		}
		for _, a := range addrs {
			if _, err := peer.Run("ip", "addr", "add", a.String()+"/24", "dev", "eth0"); err != nil {
				return err
			}
		}
		for _, s := range [][]string{{"ip", "link", "set", "eth0", "up"}, {"ip", "route", "add", "default", "via", gw.String()}} {
			if _, err := peer.Run(s...); err != nil {
				return err
			}
		}
		return nil
	}
	if err := link(client, "bcli", clientGW, []netip.Addr{clientAddr}); err != nil {
		return nil, err
	}
	if err := link(backend, "bsrv", backendGW, backendAddrs); err != nil {
		return nil, err
	}
	// The node namespace routes between the two (a namespace's own sysctl, not the host's).
	if _, err := node.NS.Run("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return nil, err
	}
	ln, err := backend.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", backendPort))
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return &topology{client: client, backend: backend, stop: func() { ln.Close(); <-done }}, nil
}

// connects times n TCP connects from the client namespace to each of targets in turn (so noise
// hits every target alike): how long connect takes, i.e. the SYN / SYN-ACK round trip through
// the node namespace, where a new connection to a Service address walks the proxy's rules and
// gets its DNAT. Sockets are non-blocking and waited for with poll, as a runtime would, and closed
// with RST (SO_LINGER 0) so that no TIME_WAIT piles up.
func (t *topology) connects(targets []netip.AddrPort, n int) ([][]time.Duration, error) {
	out := make([][]time.Duration, len(targets))
	err := t.client.Do(func() error {
		for i := range n {
			for j, target := range targets {
				d, err := connectOnce(target)
				if err != nil {
					return fmt.Errorf("connect %d to %s: %w", i, target, err)
				}
				out[j] = append(out[j], d)
			}
		}
		return nil
	})
	return out, err
}

func connectOnce(target netip.AddrPort) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer func() {
		// A failure to set linger only leaves a TIME_WAIT behind; close cannot fail usefully.
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		_ = unix.Close(fd)
	}()
	sa := &unix.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().As4()}
	start := time.Now()
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return 0, err
	}
	deadline := start.Add(3 * time.Second)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return 0, errors.New("timed out")
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n > 0 {
			break
		}
	}
	took := time.Since(start)
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return 0, err
	}
	if soErr != 0 {
		return 0, unix.Errno(soErr)
	}
	return took, nil
}

// reachable checks one connect through target from the client namespace.
func (t *topology) reachable(target netip.AddrPort) error {
	return t.client.Do(func() error {
		_, err := connectOnce(target)
		return err
	})
}
