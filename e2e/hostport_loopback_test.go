package e2e

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/nodenet/nodenet/e2e/lab"
)

// TestHostPortLoopback plays the upstream conformance spec "HostPort validates that there is no
// conflict between pods with same hostPort but different hostIP and protocol" on one node: pod1
// on 127.0.0.1:54323/tcp, which the daemon relays in userspace, pod2 on the node's address
// :54323/tcp and pod3 on the node's address :54323/udp, both DNAT; checked from the node's own
// namespace, as the spec's hostNetwork pod does. Then conflicts, a port another program of the
// node holds, daemon restarts (SIGTERM and SIGKILL) and DEL.
func TestHostPortLoopback(t *testing.T) {
	l := newLab(t)
	outside, err := l.AddOutside()
	if err != nil {
		t.Fatal(err)
	}
	node, rt := startNodeRuntime(t, l)
	ctx := t.Context()
	const port = "54323"
	loopback := net.JoinHostPort("127.0.0.1", port)
	nodeAddr := net.JoinHostPort(node.Address, port)

	newPod := func(t *testing.T, name, proto, hostIP string) *lab.Pod {
		t.Helper()
		p, err := l.NewPod(name)
		if err != nil {
			t.Fatal(err)
		}
		p.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
			{"hostPort": 54323, "containerPort": 8080, "protocol": proto, "hostIP": hostIP},
		}}
		if err := rt.Add(ctx, p); err != nil {
			t.Fatalf("ADD %s with hostPort %s/%s on %s: %v", name, port, proto, hostIP, err)
		}
		var stop func()
		if proto == "udp" {
			stop, err = p.NS.ServeUDPWho(":8080", name)
		} else {
			stop, err = p.NS.ServeWho(":8080", name)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		return p
	}
	// who asks from the node's namespace, from source (empty: the kernel's choice), as curl
	// --interface does; "" when nothing answers.
	who := func(source, addr string) string {
		name, _, err := askWhoFrom(ctx, node.NS, source, addr)
		if err != nil {
			return ""
		}
		return name
	}
	expect := func(t *testing.T, source, addr, want string) {
		t.Helper()
		if got := who(source, addr); got != want {
			t.Errorf("node (source %q) to %s reached %q, want %q", source, addr, got, want)
		}
	}
	udpWho := func(addr string) string {
		c, err := node.NS.DialUDP(":0", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := lab.AskUDP(c, 3*time.Second)
		if err != nil {
			return ""
		}
		return got
	}

	pod1 := newPod(t, "hplo1", "tcp", "127.0.0.1")
	t.Run("127.0.0.1 reaches pod1, the node's address does not", func(t *testing.T) {
		expect(t, "", loopback, "hplo1")
		expect(t, "", nodeAddr, "")
		name, client, err := askWhoFrom(ctx, node.NS, "", loopback)
		if err != nil {
			t.Fatal(err)
		}
		// The relay's connection comes from the node's address on the pod bridge.
		if name != "hplo1" || !strings.HasPrefix(client, "10.244.1.") {
			t.Errorf("pod1 saw %s from %s, want the node's bridge address", name, client)
		}
		if _, err := outside.AskRemoteAddr(ctx, nodeAddr); err == nil {
			t.Error("outside reaches port 54323 of the node, which only has a loopback mapping")
		}
	})
	newPod(t, "hplo2", "tcp", node.Address)
	newPod(t, "hplo3", "udp", node.Address)
	checkAll := func(t *testing.T) {
		t.Helper()
		expect(t, "", loopback, "hplo1")
		expect(t, node.Address, loopback, "hplo1")
		expect(t, "", nodeAddr, "hplo2")
		if got := udpWho(nodeAddr); got != "hplo3" {
			t.Errorf("udp to %s reached %q, want hplo3", nodeAddr, got)
		}
		if name, _, err := outside.AskWho(ctx, nodeAddr); err != nil || name != "hplo2" {
			t.Errorf("outside to %s: %q, %v", nodeAddr, name, err)
		}
	}
	t.Run("same hostPort, other hostIP or protocol: each pod on its own", checkAll)
	t.Run("a relayed connection echoes and ends cleanly", func(t *testing.T) {
		w, err := node.NS.DialWho(ctx, loopback)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		for _, line := range []string{"one", strings.Repeat("x", 100_000)} {
			if err := w.Echo(line, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		// Our end of stream reaches the pod, whose close comes back.
		if err := w.Conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if err := w.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if n, err := w.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
			t.Errorf("after our half-close: %d bytes, %v; want the pod's end of stream", n, err)
		}
	})
	t.Run("CHECK", func(t *testing.T) {
		if err := rt.Check(ctx, pod1); err != nil {
			t.Error(err)
		}
	})
	t.Run("recorded in the relay map, no DNAT for it, no route_localnet", func(t *testing.T) {
		out, err := node.NS.Run("nft", "list", "map", "inet", "nodenet", "hostport-relay-v4")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "127.0.0.1 . tcp . 54323") || !strings.Contains(out, pod1.ContainerID+"/eth0") {
			t.Errorf("hostport-relay-v4 does not record pod1's mapping:\n%s", out)
		}
		if out, err := node.NS.Run("nft", "list", "map", "inet", "nodenet", "hostport-addr-v4"); err != nil || strings.Contains(out, "127.0.0.1") {
			t.Errorf("hostport-addr-v4 (%v):\n%s", err, out)
		}
		out, err = node.NS.Run("sysctl", "-n", "net.ipv4.conf.all.route_localnet", "net.ipv4.conf.default.route_localnet", "net.ipv4.conf.lo.route_localnet")
		if err != nil || strings.TrimSpace(strings.ReplaceAll(out, "\n", "")) != "000" {
			t.Errorf("route_localnet: %q, %v", out, err)
		}
	})
	t.Run("a second pod on 127.0.0.1 and the same port fails, naming the holder", func(t *testing.T) {
		other, err := l.NewPod("hplo4")
		if err != nil {
			t.Fatal(err)
		}
		other.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
			{"hostPort": 54323, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
		}}
		cniErr := addError(t, rt.Add(ctx, other))
		if cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Msg, "hostPort is taken") ||
			!strings.Contains(cniErr.Details, "54323/tcp on 127.0.0.1") || !strings.Contains(cniErr.Details, pod1.ContainerID) {
			t.Errorf("error %d %q %q, want code 11 naming the port and the holder %s", cniErr.Code, cniErr.Msg, cniErr.Details, pod1.ContainerID)
		}
		if v := len(podVeths(t, node)); v != 3 {
			t.Errorf("%d veths after the failed ADD, want 3", v)
		}
		checkAll(t)
	})
	t.Run("a loopback port another program of the node holds fails the ADD, naming it", func(t *testing.T) {
		held, err := node.NS.Listen("tcp4", "127.0.0.1:54400")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		p, err := l.NewPod("hplo5")
		if err != nil {
			t.Fatal(err)
		}
		p.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
			{"hostPort": 54400, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
		}}
		cniErr := addError(t, rt.Add(ctx, p))
		if cniErr.Code != types.ErrTryAgainLater || cniErr.Msg != "hostPort cannot be opened on the node" ||
			!strings.Contains(cniErr.Details, "54400/tcp on 127.0.0.1") || !strings.Contains(cniErr.Details, "address already in use") {
			t.Errorf("error %d %q %q, want code 11 naming 127.0.0.1 and 54400", cniErr.Code, cniErr.Msg, cniErr.Details)
		}
		if v := len(podVeths(t, node)); v != 3 {
			t.Errorf("%d veths after the failed ADD, want 3", v)
		}
	})
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run("a daemon restart ("+sig.String()+") opens the relay again; its connections are cut", func(t *testing.T) {
			before, err := node.NS.Run("nft", "list", "table", "inet", "nodenet")
			if err != nil {
				t.Fatal(err)
			}
			w, err := node.NS.DialWho(ctx, loopback)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if err := node.Kill(sig, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			// The documented cost: the relay's sockets go with the daemon, DNAT stays.
			if err := w.Echo("after", 3*time.Second); err == nil {
				t.Error("a relayed connection survived the daemon")
			}
			expect(t, "", loopback, "")
			expect(t, "", nodeAddr, "hplo2")
			runDaemon(t, node)
			checkAll(t)
			after, err := node.NS.Run("nft", "list", "table", "inet", "nodenet")
			if err != nil {
				t.Fatal(err)
			}
			if before != after {
				t.Errorf("table changed across the restart:\n--- before\n%s\n--- after\n%s", before, after)
			}
			if err := rt.Check(ctx, pod1); err != nil {
				t.Errorf("CHECK after restart: %v", err)
			}
		})
	}
	t.Run("DEL closes the relay", func(t *testing.T) {
		if err := rt.Del(ctx, pod1); err != nil {
			t.Fatal(err)
		}
		expect(t, "", loopback, "")
		expect(t, "", nodeAddr, "hplo2")
		out, err := node.NS.Run("nft", "list", "map", "inet", "nodenet", "hostport-relay-v4")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "elements") {
			t.Errorf("hostport-relay-v4 not empty after DEL:\n%s", out)
		}
		// The port is the node's again.
		l, err := node.NS.Listen("tcp4", loopback)
		if err != nil {
			t.Fatalf("bind %s after DEL: %v", loopback, err)
		}
		l.Close()
	})
}

// askWhoFrom is Netns.AskWho from a given source address.
func askWhoFrom(ctx context.Context, n *lab.Netns, source, addr string) (name, client string, err error) {
	if source == "" {
		return n.AskWho(ctx, addr)
	}
	var c net.Conn
	if err := n.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	}); err != nil {
		return "", "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", "", err
	}
	buf := make([]byte, 200)
	k, err := c.Read(buf)
	if err != nil {
		return "", "", err
	}
	name, client, _ = strings.Cut(strings.TrimSpace(string(buf[:k])), " ")
	return name, client, nil
}

func addError(t *testing.T, err error) *types.Error {
	t.Helper()
	var cniErr *types.Error
	if !errors.As(err, &cniErr) {
		t.Fatalf("ADD: %v, want a CNI error", err)
	}
	return cniErr
}
