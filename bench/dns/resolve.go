package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/errgroup"

	"github.com/nodenet/nodenet/e2e/lab"
)

// ask sends one A query for name from the client namespace to the node-local address over a
// fresh UDP socket and returns the answer.
func ask(ctx context.Context, client *lab.Netns, name string, timeout time.Duration) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := client.Dial(ctx, "udp4", net.JoinHostPort(nodeLocalAddr, "53"))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return exchange(ctx, &dns.Conn{Conn: c}, name)
}

// exchange asks for name's A record on conn and waits for the reply with the query's ID, until
// ctx's deadline; replies to earlier queries that timed out are skipped.
func exchange(ctx context.Context, conn *dns.Conn, name string) (*dns.Msg, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Second)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	req := new(dns.Msg)
	req.SetQuestion(name, dns.TypeA)
	if err := conn.WriteMsg(req); err != nil {
		return nil, err
	}
	for {
		resp, err := conn.ReadMsg()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if resp.Id == req.Id {
			return resp, nil
		}
	}
}

// check compares an answer with what the query must get.
func check(q query, resp *dns.Msg) error {
	if q.want.IsValid() {
		if resp.Rcode != dns.RcodeSuccess {
			return fmt.Errorf("%s: %s, want an A record %s", q.name, dns.RcodeToString[resp.Rcode], q.want)
		}
		for _, rr := range resp.Answer {
			if a, ok := rr.(*dns.A); ok {
				if got, _ := netip.AddrFromSlice(a.A); got.Unmap() == q.want {
					return nil
				}
			}
		}
		return fmt.Errorf("%s: answer %v, want an A record %s", q.name, resp.Answer, q.want)
	}
	if resp.Rcode != dns.RcodeNameError {
		return fmt.Errorf("%s: %s, want NXDOMAIN", q.name, dns.RcodeToString[resp.Rcode])
	}
	return nil
}

// waitAnswered polls the side with name until it gets any answer, the process exits, or the
// timeout passes.
func (s *side) waitAnswered(ctx context.Context, name string, timeout time.Duration) (time.Duration, error) {
	return s.waitFor(ctx, timeout, func() error {
		_, err := ask(ctx, s.client, name, 200*time.Millisecond)
		return err
	})
}

// waitServing polls the side with the first and the last Service names until both resolve, the
// process exits, or the timeout passes.
func (s *side) waitServing(ctx context.Context, probes []query, timeout time.Duration) (time.Duration, error) {
	return s.waitFor(ctx, timeout, func() error {
		for _, q := range probes {
			resp, err := ask(ctx, s.client, q.name, 200*time.Millisecond)
			if err == nil {
				err = check(q, resp)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// waitFor polls check every 50 ms until it succeeds (returning how long that took), the
// process exits, or the timeout passes.
func (s *side) waitFor(ctx context.Context, timeout time.Duration, check func() error) (time.Duration, error) {
	start := time.Now()
	for {
		if exited, log := s.proc.Exited(); exited {
			return 0, fmt.Errorf("%s exited before it answered:\n%s", s.name, log)
		}
		last := check()
		if last == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("%s: no right answer %v after start (last: %v)", s.name, timeout, last)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// warmUp asks every query of the mixes once, a few at a time, and checks each answer: the
// external names then sit in the side's cache, and a side that answers wrongly is not measured.
func (s *side) warmUp(ctx context.Context, mixes []*mix) error {
	const workers = 8
	var all []query
	for _, m := range mixes {
		all = append(all, m.queries...)
	}
	g, ctx := errgroup.WithContext(ctx)
	for wi := range workers {
		g.Go(func() error {
			c, err := s.client.Dial(ctx, "udp4", net.JoinHostPort(nodeLocalAddr, "53"))
			if err != nil {
				return err
			}
			defer c.Close()
			conn := &dns.Conn{Conn: c}
			for i := wi; i < len(all); i += workers {
				qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				resp, err := exchange(qctx, conn, all[i].name)
				cancel()
				if err == nil {
					err = check(all[i], resp)
				}
				if err != nil {
					return fmt.Errorf("warm-up: %w", err)
				}
			}
			return nil
		})
	}
	return g.Wait()
}
