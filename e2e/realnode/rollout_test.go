package realnode_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodenet/nodenet/e2e/lab"
	"github.com/nodenet/nodenet/e2e/realnode/images"
)

// TestRolloutRestart upgrades nodenet the ways operators do — kubectl rollout restart, then a new
// image — while a pod keeps a TCP connection open through a ClusterIP to a pod on the other node
// and sends 200 DNS queries a second to the node-local address: the connection must never break
// and no query may go unanswered.
func TestRolloutRestart(t *testing.T) {
	installed(t)
	ctx := t.Context()
	ns := createNamespace(t, "rollout")
	client := runClientPod(t, ns, cluster.Nodes[0].Name)
	server := runClientPod(t, ns, cluster.Nodes[1].Name)
	clientNS, err := cluster.PodNetns(ctx, ns, client)
	if err != nil {
		t.Fatal(err)
	}
	serverNS, err := cluster.PodNetns(ctx, ns, server)
	if err != nil {
		t.Fatal(err)
	}
	// The test process serves inside the server pod's network namespace: its echo is the
	// backend of the Service, and it sees every byte the client sends.
	stop, err := serverNS.ServeWho("0.0.0.0:7000", server)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	svc, err := cluster.CP.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"role": "client-" + cluster.Nodes[1].Name},
			Ports: []corev1.ServicePort{{Port: 7000, TargetPort: intstr.FromInt32(7000)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conn := dialWhenProgrammed(t, clientNS, net.JoinHostPort(svc.Spec.ClusterIP, "7000"))
	defer conn.Close()

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	dnsLoad, err := lab.StartDNSLoad(loadCtx, clientNS, "echo."+ns+".svc.cluster.local.", 200)
	if err != nil {
		t.Fatal(err)
	}
	echo := startEchoLoop(loadCtx, conn, 20*time.Millisecond)

	for _, step := range []struct {
		name string
		args []string
	}{
		{"kubectl rollout restart", []string{"rollout", "restart", "-n", "kube-system", "daemonset/nodenet"}},
		{"image change", []string{"set", "image", "-n", "kube-system", "daemonset/nodenet", "nodenet=" + retag(t)}},
	} {
		before := daemonPods(t)
		start := time.Now()
		if _, err := cluster.Kubectl(step.args...); err != nil {
			t.Fatal(err)
		}
		if _, err := cluster.Kubectl("rollout", "status", "-n", "kube-system", "daemonset/nodenet", "--timeout=5m"); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		after := daemonPods(t)
		for node, uid := range before {
			if after[node] == uid {
				t.Errorf("%s: the daemon pod on %s was not replaced", step.name, node)
			}
		}
		t.Logf("%s: both daemon pods replaced in %v", step.name, time.Since(start).Round(100*time.Millisecond))
		time.Sleep(2 * time.Second)
	}
	stopLoad()
	e := echo.wait()
	r := dnsLoad.Wait()
	t.Logf("TCP through ClusterIP: %d echoes, longest gap between echoes %v, error: %v", e.echoes, e.maxGap, e.err)
	t.Logf("DNS: %v", r)
	if e.err != nil {
		t.Errorf("the connection through the ClusterIP broke: %v", e.err)
	}
	if r.Unanswered != 0 {
		t.Errorf("%d of %d DNS queries were never answered", r.Unanswered, r.Sent)
	}
	if r.Sent < 1000 {
		t.Errorf("only %d queries were sent", r.Sent)
	}
}

// dialWhenProgrammed connects to the Service once its rules are live. Each try is short and
// comes from a new source port: a SYN sent before the rules existed leaves a conntrack entry
// without NAT that its retransmissions would keep following.
func dialWhenProgrammed(t *testing.T, ns *lab.Netns, addr string) *lab.WhoConn {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		conn, err := ns.DialWho(ctx, addr)
		cancel()
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect to %s: %v", addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// retag gives nodenet's image a second name on every node, so that changing the DaemonSet's image
// is a real image change for kubelet, as an upgrade is.
func retag(t *testing.T) string {
	t.Helper()
	next := images.NodenetRef + "-next"
	for _, n := range cluster.Nodes {
		if err := n.Tag(t.Context(), images.NodenetRef, next); err != nil {
			t.Fatal(err)
		}
	}
	return next
}

// daemonPods maps each node to the UID of its nodenet pod.
func daemonPods(t *testing.T) map[string]string {
	t.Helper()
	list, err := cluster.CP.Client.CoreV1().Pods("kube-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nodenet"})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, p := range list.Items {
		m[p.Spec.NodeName] = string(p.UID)
	}
	return m
}

type echoResult struct {
	echoes int
	maxGap time.Duration
	err    error
}

type echoLoop struct {
	done   chan struct{}
	result echoResult
}

func (l *echoLoop) wait() echoResult { <-l.done; return l.result }

// startEchoLoop sends a line every interval over conn and waits for it to come back, until ctx
// ends or the connection fails.
func startEchoLoop(ctx context.Context, conn *lab.WhoConn, interval time.Duration) *echoLoop {
	l := &echoLoop{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		last := time.Now()
		for i := 0; ctx.Err() == nil; i++ {
			if err := conn.Echo(fmt.Sprintf("line %d", i), 5*time.Second); err != nil {
				l.result.err = err
				return
			}
			now := time.Now()
			l.result.maxGap = max(l.result.maxGap, now.Sub(last))
			last = now
			l.result.echoes++
			time.Sleep(interval)
		}
	}()
	return l
}
