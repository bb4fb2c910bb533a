package e2e

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/nodenet/nodenet/e2e/lab"
)

// TestHostPort asks for hostPorts the way containerd does for a pod with ports[].hostPort: the
// runtime passes runtimeConfig.portMappings through libcni, which hands it to the plugin only
// because the conflist nodenet installed advertises the portMappings capability; the installed
// shim forwards it to the daemon. It then checks real packets from outside the node, CHECK, a
// second pod asking for the same port, a daemon restart, and DEL.
func TestHostPort(t *testing.T) {
	l := newLab(t)
	outside, err := l.AddOutside()
	if err != nil {
		t.Fatal(err)
	}
	node, rt := startNodeRuntime(t, l)
	ctx := t.Context()

	web, err := l.NewPod("hpweb")
	if err != nil {
		t.Fatal(err)
	}
	web.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
		{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 8443, "containerPort": 80, "protocol": "tcp", "hostIP": node.Address},
	}}
	if err := rt.Add(ctx, web); err != nil {
		t.Fatalf("ADD with portMappings: %v", err)
	}
	stop, err := web.NS.ServeRemoteAddr(":80")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	reach := func(t *testing.T, addr string) {
		t.Helper()
		got, err := outside.AskRemoteAddr(ctx, addr)
		if err != nil {
			t.Fatalf("outside to %s: %v", addr, err)
		}
		if got != lab.OutsideAddr {
			t.Errorf("pod saw source %s, want the client's %s (hostPort keeps the source)", got, lab.OutsideAddr)
		}
	}
	t.Run("outside reaches the pod through the node's port", func(t *testing.T) {
		reach(t, net.JoinHostPort(node.Address, "8080"))
		reach(t, net.JoinHostPort(node.Address, "8443"))
	})
	t.Run("the node reaches the pod through its own address", func(t *testing.T) {
		got, err := node.NS.AskRemoteAddr(ctx, net.JoinHostPort(node.Address, "8080"))
		if err != nil {
			t.Fatal(err)
		}
		if got != node.Address {
			t.Errorf("pod saw source %s, want the node's %s", got, node.Address)
		}
	})
	t.Run("CHECK", func(t *testing.T) {
		if err := rt.Check(ctx, web); err != nil {
			t.Error(err)
		}
	})
	t.Run("the mapping is in nodenet's table, owned by the container", func(t *testing.T) {
		out, err := node.NS.Run("nft", "list", "map", "inet", "nodenet", "hostport-any-v4")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "tcp . 8080") || !strings.Contains(out, web.ContainerID+"/eth0") {
			t.Errorf("map hostport-any-v4 does not hold the mapping of %s:\n%s", web.ContainerID, out)
		}
	})
	t.Run("a second pod asking for the same hostPort fails, naming the conflict", func(t *testing.T) {
		other, err := l.NewPod("hpother")
		if err != nil {
			t.Fatal(err)
		}
		other.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
			{"hostPort": 8080, "containerPort": 8080, "protocol": "tcp", "hostIP": node.Address},
		}}
		err = rt.Add(ctx, other)
		var cniErr *types.Error
		if !errors.As(err, &cniErr) {
			t.Fatalf("ADD of a conflicting hostPort: %v, want a CNI error", err)
		}
		if cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Msg, "hostPort is taken") ||
			!strings.Contains(cniErr.Details, "8080/tcp") || !strings.Contains(cniErr.Details, web.ContainerID) {
			t.Errorf("error %d %q %q, want code 11 naming the port and the holder %s", cniErr.Code, cniErr.Msg, cniErr.Details, web.ContainerID)
		}
		if v := len(podVeths(t, node)); v != 1 {
			t.Errorf("%d veths after the failed ADD, want only the first pod's", v)
		}
		reach(t, net.JoinHostPort(node.Address, "8080"))
	})
	t.Run("a daemon restart keeps the mapping", func(t *testing.T) {
		before, err := node.NS.Run("nft", "list", "table", "inet", "nodenet")
		if err != nil {
			t.Fatal(err)
		}
		if err := node.Stop(); err != nil {
			t.Fatal(err)
		}
		// Served by the kernel while no daemon runs.
		reach(t, net.JoinHostPort(node.Address, "8080"))
		runDaemon(t, node)
		after, err := node.NS.Run("nft", "list", "table", "inet", "nodenet")
		if err != nil {
			t.Fatal(err)
		}
		if before != after {
			t.Errorf("table changed across the restart:\n--- before\n%s\n--- after\n%s", before, after)
		}
		reach(t, net.JoinHostPort(node.Address, "8080"))
		if err := rt.Check(ctx, web); err != nil {
			t.Errorf("CHECK after restart: %v", err)
		}
	})
	t.Run("DEL removes the mappings", func(t *testing.T) {
		if err := rt.Del(ctx, web); err != nil {
			t.Fatal(err)
		}
		if _, err := outside.AskRemoteAddr(ctx, net.JoinHostPort(node.Address, "8080")); err == nil {
			t.Error("outside still reaches port 8080 after DEL")
		}
		for _, m := range []string{"hostport-any-v4", "hostport-addr-v4"} {
			out, err := node.NS.Run("nft", "list", "map", "inet", "nodenet", m)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "elements") {
				t.Errorf("map %s not empty after DEL:\n%s", m, out)
			}
		}
	})
}
