package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/bench/internal/harness"
	"github.com/nodenet/nodenet/e2e/lab"
)

// generatorCeiling runs the same rate search as for the sides against a trivial responder
// (`dns echo`, a child process bound to the server CPU like the servers) on the same path: a
// client namespace to the node-local address on lo of a server namespace. The figure is what the
// generator can drive at most: the sides' figures mean something only well below it. The
// latencies at --latency-rate are the floor of the sides' at that rate: the path, the scheduling
// and the generator, with no server work.
func generatorCeiling(ctx context.Context, l *lab.Lab, opts options, logf func(string, ...any)) (_ capacity, floor perfRun, err error) {
	srv, err := l.AddNetns("gen")
	if err != nil {
		return capacity{}, perfRun{}, err
	}
	if _, err := srv.Run("ip", "addr", "add", nodeLocalAddr+"/32", "dev", "lo"); err != nil {
		return capacity{}, perfRun{}, err
	}
	client, err := newClient(l, srv, "gen", netip.MustParseAddr("10.244.255.254"))
	if err != nil {
		return capacity{}, perfRun{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return capacity{}, perfRun{}, err
	}
	echo := &harness.NetnsProc{Name: "trivial responder", Lab: l, NS: srv, Argv: []string{self, "echo"}, Log: filepath.Join(l.Dir, "echo.log")}
	if err := onCPU(opts.serverCPU, opts.sched, echo.Start); err != nil {
		return capacity{}, perfRun{}, err
	}
	defer func() { err = errors.Join(err, echo.Stop()) }()
	var b strings.Builder
	for i := range opts.externalNames {
		fmt.Fprintf(&b, "%s A\n", externalName(i))
	}
	file := filepath.Join(l.Dir, "queries-ceiling.txt")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		return capacity{}, perfRun{}, err
	}
	responder := &side{name: "trivial responder", client: client, proc: echo}
	if _, err := responder.waitAnswered(ctx, externalName(0), 10*time.Second); err != nil {
		return capacity{}, perfRun{}, err
	}
	gen := loadGen{opts: opts, client: client, server: srv, dir: l.Dir}
	c, err := gen.maxRate(ctx, file, "NOERROR", logf)
	if err != nil {
		return c, perfRun{}, err
	}
	floor, err = gen.latencyAt(ctx, file, "NOERROR", opts.latencyRate, logf)
	return c, floor, err
}

// echoMain is the trivial responder's main (`dns echo`): it serves the node-local address of its
// namespace from one thread, datagrams read and written in batches (recvmmsg, sendmmsg), no DNS
// parsing, a deep receive buffer — the cheapest server there is, so that the generator is what
// limits. It runs until it is killed.
func echoMain() error {
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 53, Addr: netip.MustParseAddr(nodeLocalAddr).As4()}); err != nil {
		return err
	}
	b := newMmsgBuf()
	var names [batch]unix.RawSockaddrAny
	for {
		for i := range b.msgs {
			b.iovs[i].SetLen(len(b.bufs[i]))
			b.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&names[i]))
			b.msgs[i].hdr.Namelen = unix.SizeofSockaddrAny
		}
		n, err := mmsg(unix.SYS_RECVMMSG, fd, b, batch, unix.MSG_WAITFORONE)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("recvmmsg: %w", err)
		}
		for i := range n {
			buf := b.bufs[i][:b.msgs[i].len]
			if len(buf) >= 12 {
				buf[2] |= 0x80 // QR: a response
				buf[3] &^= 0x0f
			}
			b.iovs[i].SetLen(len(buf))
		}
		// A reply that cannot be sent is a lost query, which the generator counts.
		_, _ = mmsg(unix.SYS_SENDMMSG, fd, b, n, 0)
	}
}
