package lab

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// DNSLoadResult counts what happened to the queries of a DNSLoad.
type DNSLoadResult struct {
	Sent, FirstTry, Retried, Unanswered int
	Slowest                             time.Duration
}

func (r DNSLoadResult) String() string {
	return fmt.Sprintf("%d queries: %d answered on the first try, %d after a retry, %d unanswered; slowest answer %v",
		r.Sent, r.FirstTry, r.Retried, r.Unanswered, r.Slowest)
}

// DNSLoad is a steady stream of queries to the node-local address.
type DNSLoad struct {
	done   chan struct{}
	result DNSLoadResult
}

// Wait returns the counts once the load has stopped and its last queries are settled.
func (l *DNSLoad) Wait() DNSLoadResult { <-l.done; return l.result }

// StartDNSLoad sends rate queries a second for name from ns to the node-local address until ctx
// ends, each from its own query ID on one UDP socket, retrying unanswered ones after a second,
// three tries in all; then it waits for the last answers and reports.
func StartDNSLoad(ctx context.Context, ns *Netns, name string, rate int) (*DNSLoad, error) {
	var conn net.Conn
	err := ns.Do(func() (err error) {
		conn, err = net.Dial("udp", net.JoinHostPort(NodeLocalDNS, "53"))
		return err
	})
	if err != nil {
		return nil, err
	}
	type query struct {
		first, last time.Time
		tries       int
		answered    bool
	}
	var mu sync.Mutex
	queries := map[uint16]*query{}
	var res DNSLoadResult
	send := func(id uint16) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = id
		b, _ := m.Pack()
		_, _ = conn.Write(b) // a failed send shows as an unanswered query
	}
	l := &DNSLoad{done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			var m dns.Msg
			if m.Unpack(buf[:n]) != nil || len(m.Answer) == 0 {
				continue
			}
			mu.Lock()
			if q, ok := queries[m.Id]; ok && !q.answered {
				q.answered = true
				if q.tries == 1 {
					res.FirstTry++
				} else {
					res.Retried++
				}
				res.Slowest = max(res.Slowest, time.Since(q.first))
			}
			mu.Unlock()
		}
	})
	go func() {
		defer close(l.done)
		start := time.Now()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var next uint16
		retry := func(final bool) {
			mu.Lock()
			defer mu.Unlock()
			for id, q := range queries {
				if !q.answered && q.tries < 3 && time.Since(q.last) >= time.Second {
					q.tries++
					q.last = time.Now()
					send(id)
				} else if final && !q.answered && q.tries >= 3 && time.Since(q.last) >= time.Second {
					q.answered = true // counted below as unanswered
					res.Unanswered++
				}
			}
		}
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case <-tick.C:
				// A goroutine starved of CPU misses ticks; it makes up for them, so that the
				// number of queries sent follows the clock.
				mu.Lock()
				for due := int(time.Since(start) * time.Duration(rate) / time.Second); res.Sent < due; {
					now := time.Now()
					next++
					queries[next] = &query{first: now, last: now, tries: 1}
					res.Sent++
					send(next)
				}
				mu.Unlock()
				retry(false)
			}
		}
		// Let the last queries be answered or run out of tries.
		deadline := time.Now().Add(4 * time.Second)
		for time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			retry(true)
		}
		conn.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, q := range queries {
			if !q.answered {
				res.Unanswered++
			}
		}
		l.result = res
	}()
	return l, nil
}
