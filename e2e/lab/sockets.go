package lab

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Do runs f with the calling goroutine's thread inside the namespace. A socket created in f stays
// in the namespace after f returns, so tests can serve and dial without helper processes.
func (n *Netns) Do(f func() error) error {
	h, err := ns.GetNS(n.Path())
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

// Listen opens a listener inside the namespace.
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Dial connects from inside the namespace.
func (n *Netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ServeRemoteAddr starts a TCP server inside the namespace that answers every connection with the
// address it sees the client come from, then closes. It runs until the returned stop is called.
func (n *Netns) ServeRemoteAddr(addr string) (stop func(), err error) {
	l, err := n.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, host)
			c.Close()
		}
	}()
	return func() { l.Close(); <-done }, nil
}

// AskRemoteAddr connects from the namespace to a ServeRemoteAddr server and returns the source
// address the server saw.
func (n *Netns) AskRemoteAddr(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := n.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	k, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	return strings.TrimSpace(string(buf[:k])), nil
}

// Ping sends one ICMP echo from the namespace and waits up to two seconds for the reply.
func (n *Netns) Ping(addr string) error {
	_, err := n.Run("ping", "-c", "1", "-W", "2", addr)
	return err
}
