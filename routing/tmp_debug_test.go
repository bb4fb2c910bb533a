package routing

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func nstat(ns string) map[string]string {
	out, _ := exec.Command("ip", "netns", "exec", ns, "nstat", "-asz", "--json").CombinedOutput()
	_ = out
	o2, _ := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "nstat -asz | awk '$2!=0'").CombinedOutput()
	m := map[string]string{}
	for _, l := range strings.Split(string(o2), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 { m[f[0]] = f[1] }
	}
	return m
}

func TestTmpDebug(t *testing.T) {
	for i := 0; i < 8; i++ {
		nd := newNode(t)
		uplink(t, nd, 1500)
		l := nd.local(t, dualStack)
		nd.ensure(t, l)
		p := attach(t, l, "pod-out", "10.244.1.7/24")
		srvN := listen(t, nd.ns, "0.0.0.0:0")
		t0 := time.Now()
		mustPeerSeen(t, p.ns, net.JoinHostPort("10.244.1.1", srvN.port()))
		el := time.Since(t0)
		if el > 100*time.Millisecond {
			nn := nd.ns.Path()[len("/var/run/netns/"):]
			pn := p.ns.Path()[len("/var/run/netns/"):]
			t.Logf("SLOW %v\nnode: %v\npod: %v", el, nstat(nn), nstat(pn))
			o, _ := exec.Command("ip", "-n", nn, "-s", "link").CombinedOutput()
			t.Logf("%s", o)
			return
		}
		t.Logf("fast %v", el)
	}
}
