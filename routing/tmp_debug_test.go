package routing

import (
	"net"
	"testing"
	"time"
)

func TestTmpDebug(t *testing.T) {
	slow := 0
	for i := 0; i < 60; i++ {
		nd := newNode(t)
		l := nd.local(t, dualStack)
		nd.ensure(t, l)
		t1 := time.Now()
		p := attach(t, l, "pod-out", "10.244.1.7/24")
		at := time.Since(t1)
		srvN := listen(t, nd.ns, "0.0.0.0:0")
		t0 := time.Now()
		mustPeerSeen(t, p.ns, net.JoinHostPort("10.244.1.1", srvN.port()))
		if el := time.Since(t0); el > 100*time.Millisecond {
			slow++
			t.Logf("SLOW %d: %v (attach %v)", i, el, at)
		}
		if i%10 == 0 { t.Logf("attach took %v", at) }
	}
	t.Logf("slow %d/60", slow)
}
