package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"go.uber.org/zap/zaptest"

	"github.com/nodenet/nodenet/internal/nstest"
	"github.com/nodenet/nodenet/routing/localports"
)

// withRelay is a HostPorts of the node with a relay whose sockets are in the node's namespace,
// as the daemon has them.
func withRelay(t *testing.T, nd *node) (*HostPorts, *localports.Relay) {
	t.Helper()
	r := localports.New(localports.Config{Netns: nd.ns}, nil, zaptest.NewLogger(t))
	t.Cleanup(r.Close)
	return NewHostPorts(HostPortsConfig{NetnsFD: int(nd.ns.Fd()), Relay: r}, zaptest.NewLogger(t)), r
}

// serveNamed answers every TCP connection in n with "NAME PEER".
func serveNamed(t *testing.T, n ns.NetNS, addr, name string) {
	t.Helper()
	nstest.Serve(t, n, addr, func(c net.Conn) string {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		return name + " " + host
	})
}

// serveUDPNamed answers every datagram in n with NAME.
func serveUDPNamed(t *testing.T, n ns.NetNS, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	if err := n.Do(func(ns.NetNS) (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if _, err := pc.WriteTo([]byte(name), from); err != nil {
				t.Errorf("udp reply: %v", err)
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
}

// askFrom connects from inside n, from source (empty: the kernel's choice), to addr and returns
// the line the server answered.
func askFrom(n ns.NetNS, source, addr string) (string, error) {
	var line string
	err := n.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: 3 * time.Second}
		if source != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		buf := make([]byte, 100)
		k, err := c.Read(buf)
		line = strings.TrimSpace(string(buf[:k]))
		return err
	})
	return line, err
}

func askUDPFrom(n ns.NetNS, addr string) (string, error) {
	var answer string
	err := n.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		if _, err := c.Write([]byte("who")); err != nil {
			return err
		}
		buf := make([]byte, 100)
		k, err := c.Read(buf)
		answer = string(buf[:k])
		return err
	})
	return answer, err
}

// TestHostPortRelayed plays the upstream conformance spec "no conflict between pods with same
// hostPort but different hostIP and protocol" against real sockets: pod a on 127.0.0.1:54323 (tcp
// and udp) and [::1]:54324, pod b on the node's address :54323, reached from the node. Then
// conflicts, a port another program holds, Check and Ensure, a restart, and Unmap.
func TestHostPortRelayed(t *testing.T) {
	lab := newHPLab(t)
	hp, relay := withRelay(t, lab.nd)
	a := attach(t, lab.l, "hp-a", "10.244.1.2/24", "fd00:10:244:1::2/64")
	b := attach(t, lab.l, "hp-b", "10.244.1.3/24")
	c := attach(t, lab.l, "hp-c", "10.244.1.4/24")
	serveNamed(t, a.ns, "[::]:8080", "a")
	serveUDPNamed(t, a.ns, "[::]:8080", "a")
	serveNamed(t, b.ns, "[::]:8080", "b")
	aMappings := []PortMapping{
		{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.1"},
		{HostPort: 54323, ContainerPort: 8080, Protocol: "udp", HostIP: "127.0.0.1"},
		{HostPort: 54324, ContainerPort: 8080, HostIP: "::1"},
	}
	if err := hp.Map(attachmentOf(a), podAddrs(a), aMappings); err != nil {
		t.Fatal(err)
	}
	if err := hp.Map(attachmentOf(b), podAddrs(b), []PortMapping{{HostPort: 54323, ContainerPort: 8080, HostIP: hpNode4}}); err != nil {
		t.Fatalf("a node address on the port a relays on loopback: %v", err)
	}

	node := lab.nd.ns
	reach := func(t *testing.T, from ns.NetNS, source, addr, want string) {
		t.Helper()
		got, err := askFrom(from, source, addr)
		if want == "" {
			if err == nil {
				t.Errorf("%s answered %q, want nothing there", addr, got)
			}
			return
		}
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", addr, got, err, want)
		}
	}
	checkAll := func(t *testing.T) {
		t.Helper()
		// Relayed: the pod sees the node's address on the bridge, the relay's socket.
		reach(t, node, "", "127.0.0.1:54323", "a 10.244.1.1")
		reach(t, node, hpNode4, "127.0.0.1:54323", "a 10.244.1.1") // curl --interface NODE-IP, as the spec does
		reach(t, node, "", "[::1]:54324", "a fd00:10:244:1::1")
		if got, err := askUDPFrom(node, "127.0.0.1:54323"); err != nil || got != "a" {
			t.Errorf("udp 127.0.0.1:54323: %q, %v", got, err)
		}
		// DNAT, as before.
		reach(t, node, "", net.JoinHostPort(hpNode4, "54323"), "b "+hpNode4)
		reach(t, lab.outside, "", net.JoinHostPort(hpNode4, "54323"), "b "+hpClient4)
		// Neither on the node's other address, nor a's loopback port from outside.
		reach(t, node, "", net.JoinHostPort(hpNode4b, "54323"), "")
		reach(t, lab.outside, "", net.JoinHostPort(hpNode4b, "54323"), "")
	}
	t.Run("each address reaches its pod", checkAll)

	t.Run("recorded in the relay maps only, and no route_localnet", func(t *testing.T) {
		relay4 := inNS(t, node, "nft", "list", "map", "inet", tableName, "hostport-relay-v4")
		for _, want := range []string{"127.0.0.1 . tcp . 54323", "127.0.0.1 . udp . 54323", attachmentOf(a).key()} {
			if !strings.Contains(relay4, want) {
				t.Errorf("hostport-relay-v4 lacks %q:\n%s", want, relay4)
			}
		}
		if relay6 := inNS(t, node, "nft", "list", "map", "inet", tableName, "hostport-relay-v6"); !strings.Contains(relay6, "::1 . tcp . 54324") {
			t.Errorf("hostport-relay-v6 lacks the ::1 mapping:\n%s", relay6)
		}
		for _, m := range []string{"hostport-addr-v4", "hostport-addr-v6", "hostport-any-v4"} {
			if out := inNS(t, node, "nft", "list", "map", "inet", tableName, m); strings.Contains(out, "127.0.0.1") || strings.Contains(out, "::1 .") {
				t.Errorf("a loopback mapping in DNAT map %s:\n%s", m, out)
			}
		}
		if out := inNS(t, node, "nft", "list", "set", "inet", tableName, "hostport-hairpin-v6"); strings.Contains(out, "fd00:10:244:1::2") {
			t.Errorf("hairpin for a pod with relayed mappings only in that family:\n%s", out)
		}
		for _, dev := range []string{"all", "default", "nodenet0", "lo"} {
			if v := sysctl(t, node, "net/ipv4/conf/"+dev+"/route_localnet"); v != "0" {
				t.Errorf("route_localnet of %s is %s", dev, v)
			}
		}
	})

	t.Run("conflicts", func(t *testing.T) {
		for _, m := range []PortMapping{
			{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.1"},
			{HostPort: 54323, ContainerPort: 9090, Protocol: "udp", HostIP: "127.0.0.1"},
			{HostPort: 54323, ContainerPort: 8080},
		} {
			err := hp.Map(attachmentOf(c), podAddrs(c), []PortMapping{m})
			var conflict *PortConflictError
			if !errors.As(err, &conflict) {
				t.Errorf("Map %s: %v, want a conflict", m, err)
			}
		}
		// Another loopback address, another protocol on the node's address: none.
		for _, m := range []PortMapping{{HostPort: 54323, ContainerPort: 8080, HostIP: "127.0.0.2"}, {HostPort: 54323, ContainerPort: 8080, Protocol: "udp", HostIP: hpNode4}} {
			if err := hp.Map(attachmentOf(c), podAddrs(c), []PortMapping{m}); err != nil {
				t.Errorf("Map %s: %v", m, err)
			}
		}
		if err := hp.Unmap(attachmentOf(c)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a port another program of the node holds fails, leaving nothing", func(t *testing.T) {
		var held net.Listener
		if err := node.Do(func(ns.NetNS) (err error) {
			held, err = net.Listen("tcp4", "127.0.0.1:54325")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		before := inNS(t, node, "nft", "list", "table", "inet", tableName)
		err := hp.Map(attachmentOf(c), podAddrs(c), []PortMapping{
			{HostPort: 54326, ContainerPort: 8080, HostIP: "127.0.0.1"},
			{HostPort: 54325, ContainerPort: 8080, HostIP: "127.0.0.1"},
		})
		var unavailable *PortUnavailableError
		if !errors.As(err, &unavailable) || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("Map of a held port: %v, want PortUnavailableError with EADDRINUSE", err)
		}
		if want := "hostPort 54325/tcp on 127.0.0.1 to 10.244.1.4:8080: bind: address already in use"; err.Error() != want {
			t.Errorf("error %q, want %q", err, want)
		}
		if after := inNS(t, node, "nft", "list", "table", "inet", tableName); after != before {
			t.Errorf("table changed by a failed Map:\n--- before\n%s\n--- after\n%s", before, after)
		}
		reach(t, node, "", "127.0.0.1:54326", "") // the request's other socket was closed again
		checkAll(t)
	})

	t.Run("Check, and Ensure opens again what is gone", func(t *testing.T) {
		if err := hp.Check(attachmentOf(a), podAddrs(a), aMappings); err != nil {
			t.Fatalf("Check: %v", err)
		}
		if err := relay.Set(nil); err != nil { // behind HostPorts' back
			t.Fatal(err)
		}
		if err := hp.Check(attachmentOf(a), podAddrs(a), aMappings); err == nil || !strings.Contains(err.Error(), "is not relayed") {
			t.Errorf("Check with the sockets closed: %v", err)
		}
		if n := nftTransactions(t, lab.nd, func() {
			if err := hp.Ensure(); err != nil {
				t.Error(err)
			}
		}); n != 0 {
			t.Errorf("Ensure sent %d transactions to open sockets", n)
		}
		if err := hp.Check(attachmentOf(a), podAddrs(a), aMappings); err != nil {
			t.Errorf("Check after Ensure: %v", err)
		}
		checkAll(t)
	})

	t.Run("a restarted daemon opens the sockets again from the kernel's record", func(t *testing.T) {
		relay.Close() // the old daemon's sockets go with its process
		reach(t, node, "", "127.0.0.1:54323", "")
		restarted, restartedRelay := withRelay(t, lab.nd)
		live := map[Attachment][]netip.Addr{attachmentOf(a): podAddrs(a), attachmentOf(b): podAddrs(b)}
		if n := nftTransactions(t, lab.nd, func() {
			if err := restarted.Adopt(live); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Adopt sent %d transactions", n)
		}
		checkAll(t)
		if err := restarted.Check(attachmentOf(a), podAddrs(a), aMappings); err != nil {
			t.Errorf("Check after restart: %v", err)
		}
		hp, relay = restarted, restartedRelay
	})

	t.Run("a pod that is gone at restart loses its sockets", func(t *testing.T) {
		relay.Close()
		restarted, _ := withRelay(t, lab.nd)
		if err := restarted.Adopt(map[Attachment][]netip.Addr{attachmentOf(b): podAddrs(b)}); err != nil {
			t.Fatal(err)
		}
		reach(t, node, "", "127.0.0.1:54323", "")
		reach(t, node, "", net.JoinHostPort(hpNode4, "54323"), "b "+hpNode4)
		if out := inNS(t, node, "nft", "list", "map", "inet", tableName, "hostport-relay-v4"); strings.Contains(out, "elements") {
			t.Errorf("relay map not empty:\n%s", out)
		}
		// a comes back, as after a retried ADD, and Unmap closes its sockets.
		if err := restarted.Map(attachmentOf(a), podAddrs(a), aMappings); err != nil {
			t.Fatal(err)
		}
		reach(t, node, "", "127.0.0.1:54323", "a 10.244.1.1")
		if err := restarted.Unmap(attachmentOf(a)); err != nil {
			t.Fatal(err)
		}
		reach(t, node, "", "127.0.0.1:54323", "")
		reach(t, node, "", "[::1]:54324", "")
		if _, err := askUDPFrom(node, "127.0.0.1:54323"); err == nil {
			t.Error("udp 127.0.0.1:54323 answered after Unmap")
		}
		for _, m := range []string{"hostport-relay-v4", "hostport-relay-v6"} {
			if out := inNS(t, node, "nft", "list", "map", "inet", tableName, m); strings.Contains(out, "elements") {
				t.Errorf("%s not empty after Unmap:\n%s", m, out)
			}
		}
	})
}

// TestHostPortRelayedTargetChange: a retried ADD whose loopback mapping goes to another pod port
// keeps the socket and sends new connections to the new port.
func TestHostPortRelayedTargetChange(t *testing.T) {
	lab := newHPLab(t)
	hp, _ := withRelay(t, lab.nd)
	a := attach(t, lab.l, "hp-a", "10.244.1.2/24")
	serveNamed(t, a.ns, "[::]:8080", "8080")
	serveNamed(t, a.ns, "[::]:8081", "8081")
	for _, port := range []int{8080, 8081} {
		if err := hp.Map(attachmentOf(a), podAddrs(a), []PortMapping{{HostPort: 54323, ContainerPort: port, HostIP: "127.0.0.1"}}); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%d 10.244.1.1", port)
		if got, err := askFrom(lab.nd.ns, "", "127.0.0.1:54323"); err != nil || got != want {
			t.Errorf("to pod port %d: %q, %v", port, got, err)
		}
	}
}
