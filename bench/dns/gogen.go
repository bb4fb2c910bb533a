package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// The Go load generator: one thread, many connected UDP sockets, queries sent with sendmmsg and
// answers read with recvmmsg, so that a query costs the generator little more than the kernel's
// own work. With a target rate it is open loop: it sends on schedule whether or not earlier
// queries were answered, so a server that falls behind loses queries instead of slowing the
// load. Without one it keeps a fixed number of queries outstanding, as fast as they come back.
// It runs as a child process of the benchmark (`dns loadgen ...`), bound to the load CPU, and
// prints one JSON object.
//
// An answer's arrival time is the kernel's (SO_TIMESTAMPNS), not the time the generator got to
// read it, so the generator can wake only every tick and batch its work. That keeps it far below
// a whole CPU: at real-time priority a thread that uses more than the kernel's real-time share
// (95 %) is stopped for the rest of each second, and the queries it then sends late in one burst
// queue up at the server. A first version polled without pause and did exactly that at 58k/s:
// a 45–49 ms stop every second, and a p99 of 11 ms for a server that answers in 50 µs.

// genResult is what the generator prints.
type genResult struct {
	Sent      int            `json:"sent"`
	Completed int            `json:"completed"`
	Lost      int            `json:"lost"`
	Rcodes    map[string]int `json:"rcodes"`
	// Offered is the rate at which queries went out (sent over the sending time); QPS the rate
	// of answers over the same time.
	Offered float64 `json:"offered"`
	QPS     float64 `json:"qps"`
	// Latencies are nanoseconds, one per answered query, with -latencies.
	Latencies []int64 `json:"latencies,omitempty"`
	// MaxSendLag is how far (nanoseconds) sending fell behind the schedule at worst; more than a
	// few ticks means the generator itself was held up and the latencies are not the server's
	// alone.
	MaxSendLag int64 `json:"maxSendLag"`
}

type genConfig struct {
	server    netip.AddrPort
	file      string
	rate      float64
	duration  time.Duration
	timeout   time.Duration
	sockets   int
	inFlight  int // outstanding queries without a rate
	latencies bool
	tick      time.Duration
}

// loadgenMain is the child process's main: `dns loadgen -server ... -file ...`.
func loadgenMain(args []string, out io.Writer) error {
	var cfg genConfig
	var server string
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.StringVar(&server, "server", nodeLocalAddr+":53", "server address")
	fs.StringVar(&cfg.file, "file", "", `query file, one "name A" per line`)
	fs.Float64Var(&cfg.rate, "rate", 0, "queries per second (0: keep -in-flight outstanding)")
	fs.DurationVar(&cfg.duration, "duration", 3*time.Second, "sending time")
	fs.DurationVar(&cfg.timeout, "timeout", time.Second, "a query unanswered this long is lost")
	fs.IntVar(&cfg.sockets, "sockets", 20, "UDP sockets (source ports)")
	fs.IntVar(&cfg.inFlight, "in-flight", 200, "queries outstanding without -rate")
	fs.BoolVar(&cfg.latencies, "latencies", false, "report every answer's latency")
	fs.DurationVar(&cfg.tick, "tick", 50*time.Microsecond, "the generator wakes at most this often (answers carry the kernel's arrival time)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if cfg.server, err = netip.ParseAddrPort(server); err != nil || !cfg.server.Addr().Is4() {
		return fmt.Errorf("-server %q: want IPv4:port", server)
	}
	if cfg.sockets < 1 || cfg.sockets > 1000 || cfg.inFlight < 1 || cfg.duration <= 0 || cfg.timeout <= 0 || cfg.rate < 0 || cfg.tick <= 0 {
		return errors.New("-sockets must be 1..1000, -in-flight, -duration, -timeout and -tick positive, -rate not negative")
	}
	// Each socket's 16-bit IDs must not come round while a query with the same ID may still be
	// answered.
	if cfg.rate*cfg.timeout.Seconds() > float64(cfg.sockets)*32768 {
		return fmt.Errorf("-rate %.0f: too fast for %d sockets' query IDs within -timeout %v", cfg.rate, cfg.sockets, cfg.timeout)
	}
	queries, err := packQueries(cfg.file)
	if err != nil {
		return err
	}
	res, err := generate(cfg, queries)
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(res)
}

// packQueries reads a dnsperf-style query file into wire-format queries (recursion desired, as
// a stub resolver sends them).
func packQueries(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		qtype := dns.TypeA
		if len(fields) > 1 {
			t, ok := dns.StringToType[strings.ToUpper(fields[1])]
			if !ok {
				return nil, fmt.Errorf("%s: unknown type %q", path, fields[1])
			}
			qtype = t
		}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(fields[0]), qtype)
		wire, err := m.Pack()
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, fields[0], err)
		}
		out = append(out, wire)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no queries", path)
	}
	return out, nil
}

// batch is the most messages one sendmmsg or recvmmsg call moves.
const batch = 64

// mmsghdr is struct mmsghdr of <sys/socket.h>.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// mmsgBuf is a batch of message buffers for one call, allocated once, with room for each
// message's receive timestamp.
type mmsgBuf struct {
	msgs [batch]mmsghdr
	iovs [batch]unix.Iovec
	bufs [batch][512]byte
	ctrl [batch][64]byte
}

func newMmsgBuf() *mmsgBuf {
	b := new(mmsgBuf)
	for i := range b.msgs {
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(len(b.bufs[i]))
		b.msgs[i].hdr.Iov = &b.iovs[i]
		b.msgs[i].hdr.Iovlen = 1
	}
	return b
}

// expectTimestamps makes recvmmsg return each message's arrival time (see arrival).
func (b *mmsgBuf) expectTimestamps() {
	for i := range b.msgs {
		b.msgs[i].hdr.Control = &b.ctrl[i][0]
		b.msgs[i].hdr.SetControllen(len(b.ctrl[i]))
	}
}

// arrival is the kernel's arrival time of message i (nanoseconds since the epoch), 0 if it
// carries none.
func (b *mmsgBuf) arrival(i int) int64 {
	ctrl := b.ctrl[i][:b.msgs[i].hdr.Controllen]
	if len(ctrl) < unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))) {
		return 0
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
	if h.Level != unix.SOL_SOCKET || h.Type != unix.SCM_TIMESTAMPNS {
		return 0
	}
	return (*unix.Timespec)(unsafe.Pointer(&ctrl[unix.CmsgLen(0)])).Nano()
}

func mmsg(trap uintptr, fd int, b *mmsgBuf, n int, flags int) (int, error) {
	r, _, errno := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(n), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// sent is one query in flight, in the order they went out.
type sent struct {
	sock int
	id   uint16
	at   int64 // nanoseconds since start
}

// generate runs the load and collects the answers.
func generate(cfg genConfig, queries [][]byte) (genResult, error) {
	fds := make([]int, 0, cfg.sockets)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	sa := &unix.SockaddrInet4{Port: int(cfg.server.Port()), Addr: cfg.server.Addr().As4()}
	for range cfg.sockets {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return genResult{}, err
		}
		fds = append(fds, fd)
		// Room for every answer that may arrive while the thread sends: the generator must not
		// be where answers are dropped. FORCE passes net.core.rmem_max (we are root).
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
			return genResult{}, fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return genResult{}, fmt.Errorf("SO_TIMESTAMPNS: %w", err)
		}
		if err := unix.Connect(fd, sa); err != nil {
			return genResult{}, fmt.Errorf("connect %s: %w", cfg.server, err)
		}
	}
	pending := make([][]int64, cfg.sockets) // by socket and ID: when it was sent, 0 if not in flight
	for i := range pending {
		pending[i] = make([]int64, 1<<16)
		clear(pending[i]) // writing faults the pages in now, not while the clock runs
	}
	nextID := make([]uint16, cfg.sockets)
	// In flight or answered, oldest first; answered ones are dropped at the head. Room for the
	// whole run, allocated before it starts.
	queue := make([]sent, 0, int(cfg.rate*(cfg.duration+cfg.timeout).Seconds())+cfg.inFlight)
	res := genResult{Rcodes: map[string]int{}}
	if cfg.latencies {
		res.Latencies = make([]int64, 0, cap(queue))
	}
	// Everything the run needs is allocated by now; a collection would stop the only thread
	// for milliseconds and hold up the queries due meanwhile.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	out, in := newMmsgBuf(), newMmsgBuf()
	in.expectTimestamps()
	pollFds := make([]unix.PollFd, len(fds))
	for i, fd := range fds {
		pollFds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}

	// Times are nanoseconds since start on the wall clock, the clock of the kernel's timestamps;
	// never 0, which pending keeps for "not in flight".
	start := time.Now().UnixNano()
	since := func() int64 { return time.Now().UnixNano() - start + 1 }
	end := int64(cfg.duration)
	sock, next, outstanding := 0, 0, 0
	var sendEnd int64
	for {
		now := since()
		sending := now < end
		if !sending && sendEnd == 0 {
			sendEnd = now
		}
		// Send what is due: on schedule with a rate, else up to the outstanding limit.
		due := 0
		if sending {
			if cfg.rate > 0 {
				due = int(cfg.rate*float64(now)/1e9) - res.Sent
				if due > 0 {
					// The oldest unsent query was due this long ago.
					lag := now - int64(float64(res.Sent+1)*1e9/cfg.rate)
					res.MaxSendLag = max(res.MaxSendLag, lag)
				}
			} else {
				due = cfg.inFlight - outstanding
			}
		}
		worked := false
		for due > 0 {
			n := min(due, batch)
			fd := fds[sock]
			for i := range n {
				q := queries[next%len(queries)]
				buf := out.bufs[i][:len(q)]
				copy(buf, q)
				id := nextID[sock]
				nextID[sock]++
				buf[0], buf[1] = byte(id>>8), byte(id)
				out.iovs[i].SetLen(len(q))
				next++
			}
			at := since()
			k, err := mmsg(unix.SYS_SENDMMSG, fd, out, n, 0)
			if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.ENOBUFS) {
				return res, fmt.Errorf("sendmmsg: %w", err)
			}
			for i := range k {
				id := uint16(out.bufs[i][0])<<8 | uint16(out.bufs[i][1])
				if pending[sock][id] != 0 {
					// Its ID came round while it was still unanswered: it is lost.
					res.Lost++
					outstanding--
				}
				pending[sock][id] = at
				queue = append(queue, sent{sock, id, at})
			}
			// Unsent queries give their IDs and names back.
			nextID[sock] -= uint16(n - k)
			next -= n - k
			res.Sent += k
			outstanding += k
			due -= n
			sock = (sock + 1) % len(fds)
			worked = worked || k > 0
			if k < n {
				break // the socket's send buffer is full: read first
			}
		}
		// Read every answer waiting, on the sockets that have any.
		if _, err := unix.Ppoll(pollFds, &unix.Timespec{}, nil); err != nil && !errors.Is(err, unix.EINTR) {
			return res, fmt.Errorf("ppoll: %w", err)
		}
		for s, fd := range fds {
			if pollFds[s].Revents&unix.POLLIN == 0 {
				continue
			}
			for {
				for i := range in.msgs {
					in.iovs[i].SetLen(len(in.bufs[i]))
					in.msgs[i].hdr.SetControllen(len(in.ctrl[i]))
				}
				k, err := mmsg(unix.SYS_RECVMMSG, fd, in, batch, unix.MSG_DONTWAIT)
				if err != nil {
					if errors.Is(err, unix.EAGAIN) {
						break
					}
					return res, fmt.Errorf("recvmmsg: %w", err)
				}
				read := since()
				for i := range k {
					at := read
					if ts := in.arrival(i); ts != 0 {
						at = ts - start + 1
					}
					b := in.bufs[i][:in.msgs[i].len]
					if len(b) < 12 || b[2]&0x80 == 0 {
						continue // not a DNS response
					}
					id := uint16(b[0])<<8 | uint16(b[1])
					t := pending[s][id]
					if t == 0 {
						continue // late: already counted as lost
					}
					pending[s][id] = 0
					outstanding--
					res.Completed++
					res.Rcodes[dns.RcodeToString[int(b[3]&0x0f)]]++
					if cfg.latencies {
						res.Latencies = append(res.Latencies, at-t)
					}
				}
				worked = worked || k > 0
				if k < batch {
					break
				}
			}
		}
		// Queries unanswered for the timeout are lost.
		now = since()
		h := 0
		for ; h < len(queue); h++ {
			q := queue[h]
			if pending[q.sock][q.id] != q.at {
				continue // answered (or its ID reused, which counted it lost)
			}
			if now-q.at < int64(cfg.timeout) {
				break
			}
			pending[q.sock][q.id] = 0
			res.Lost++
			outstanding--
		}
		queue = queue[h:]
		if !sending && outstanding == 0 {
			break
		}
		// Sleep a tick (less when the next query is due sooner and nothing else was done); the
		// answers that come meanwhile keep their arrival times.
		wait := int64(cfg.tick)
		if !worked && cfg.rate > 0 && sending {
			wait = min(wait, int64(float64(res.Sent+1)*1e9/cfg.rate)-since())
		}
		if wait > 0 {
			ts := unix.NsecToTimespec(wait)
			if err := unix.Nanosleep(&ts, nil); err != nil && !errors.Is(err, unix.EINTR) {
				return res, fmt.Errorf("nanosleep: %w", err)
			}
		}
	}
	secs := float64(sendEnd) / 1e9
	res.Offered = float64(res.Sent) / secs
	res.QPS = float64(res.Completed) / secs
	return res, nil
}
