package listen

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// readerEnv makes the test binary a reader process (see TestMain): the stand-in for the daemon
// that the kernel tests kill, holding the configuration as JSON.
const readerEnv = "NODENET_LISTEN_TEST_READER"

type readerSpec struct {
	Keeper     string
	Addr       netip.Addr
	Port       int
	UDPSockets int
}

// runReader opens the sockets through the keeper, says "ready" on stdout and echoes UDP
// datagrams and TCP lines until SIGTERM (then it closes its sockets and exits 0) or SIGKILL.
func runReader(spec string) int {
	var r readerSpec
	if err := json.Unmarshal([]byte(spec), &r); err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		return 2
	}
	log, err := zap.NewDevelopment(zap.AddStacktrace(zap.DPanicLevel))
	if err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		return 2
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	s, err := Open(context.Background(), Config{Addrs: []netip.Addr{r.Addr}, Port: r.Port, UDPSockets: r.UDPSockets, KeeperSocket: r.Keeper, Log: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		return 1
	}
	var wg sync.WaitGroup
	for _, c := range s.UDP {
		wg.Go(func() {
			buf := make([]byte, 512)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return // stopped
				}
				// A lost answer shows as a missing sequence number at the client.
				_, _ = c.WriteToUDPAddrPort(buf[:n], from)
			}
		})
	}
	for _, l := range s.TCP {
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return // stopped
				}
				wg.Go(func() { echoLine(c) })
			}
		})
	}
	fmt.Println("ready")
	<-term
	// A graceful stop, as the daemon must do it: stop reading, answer what was read, and only
	// then close; closing at once would lose the queries read but not yet answered.
	stop := time.Now()
	for _, c := range s.UDP {
		if err := c.SetReadDeadline(stop); err != nil {
			fmt.Fprintln(os.Stderr, "reader: stop reading:", err)
		}
	}
	for _, l := range s.TCP {
		if err := l.SetDeadline(stop); err != nil {
			fmt.Fprintln(os.Stderr, "reader: stop accepting:", err)
		}
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "reader: close:", err)
		return 1
	}
	return 0
}

func echoLine(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil {
		// A failed answer shows at the client.
		_, _ = c.Write([]byte(line))
	}
}
