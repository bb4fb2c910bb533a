package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Servers that say who they are, for Service tests: a client learns which backend answered and
// the backend reports the source address it saw. They run as goroutines of the calling process
// with their sockets inside a namespace, so no helper process is started.

// ServeWho starts a TCP server inside the namespace that greets every connection with one line,
// "NAME CLIENT-ADDRESS", then echoes what the client sends until it closes. stop closes the
// listener and every open connection.
func (n *Netns) ServeWho(addr, name string) (stop func(), err error) {
	l, err := n.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				if _, err := fmt.Fprintf(c, "%s %s\n", name, host); err != nil {
					return
				}
				// The echo ends when the client closes or stop closes the connection.
				_, _ = io.Copy(c, c)
			})
		}
	})
	return func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}, nil
}

// WhoConn is a connection to a ServeWho server.
type WhoConn struct {
	net.Conn
	// Name is the server's name and Client the source address it saw.
	Name, Client string
	r            *bufio.Reader
}

// DialWho connects from the namespace to a ServeWho server and reads its greeting.
func (n *Netns) DialWho(ctx context.Context, addr string) (*WhoConn, error) {
	c, err := n.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	w := &WhoConn{Conn: c, r: bufio.NewReader(c)}
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		c.Close()
		return nil, err
	}
	line, err := w.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read greeting from %s: %w", addr, err)
	}
	name, client, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		c.Close()
		return nil, fmt.Errorf("greeting from %s: %q", addr, line)
	}
	w.Name, w.Client = name, client
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, err
	}
	return w, nil
}

// Echo sends one line and waits up to timeout for it to come back.
func (w *WhoConn) Echo(line string, timeout time.Duration) error {
	if err := w.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := io.WriteString(w, line+"\n"); err != nil {
		return err
	}
	got, err := w.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("echo: sent %q, got %q", line, got)
	}
	return nil
}

// AskWho connects to a ServeWho server and returns its name and the client address it saw.
func (n *Netns) AskWho(ctx context.Context, addr string) (name, client string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	w, err := n.DialWho(ctx, addr)
	if err != nil {
		return "", "", err
	}
	defer w.Close()
	return w.Name, w.Client, nil
}

// ServeUDPWho starts a UDP server inside the namespace that answers every datagram with NAME.
func (n *Netns) ServeUDPWho(addr, name string) (stop func(), err error) {
	var pc net.PacketConn
	if err := n.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			// A reply that cannot be sent is a lost datagram, which the client retries.
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	return func() { pc.Close(); <-done }, nil
}

// DialUDP opens a UDP socket inside the namespace bound to local (e.g. ":40000", a fixed source
// port) and connected to remote.
func (n *Netns) DialUDP(local, remote string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := n.Do(func() error {
		laddr, err := net.ResolveUDPAddr("udp", local)
		if err != nil {
			return err
		}
		raddr, err := net.ResolveUDPAddr("udp", remote)
		if err != nil {
			return err
		}
		c, err = net.DialUDP("udp", laddr, raddr)
		return err
	})
	return c, err
}

// AskUDP sends one datagram on c and returns the answer, waiting up to timeout.
func AskUDP(c *net.UDPConn, timeout time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	k, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:k]), nil
}

// ServeHTTPWho starts an HTTP server inside the namespace answering every request with NAME;
// it stands in for the seed lab's nginx.
func (n *Netns) ServeHTTPWho(addr, name string) (stop func(), err error) {
	l, err := n.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, name)
	}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Serve returns ErrServerClosed after Close; nothing else ends it.
		_ = srv.Serve(l)
	}()
	return func() { srv.Close(); <-done }, nil
}

// HTTPGet fetches url from inside the namespace without keep-alive and returns the status code,
// the headers and the body.
func (n *Netns) HTTPGet(ctx context.Context, url string) (int, http.Header, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: n.Dial, DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body), err
}
