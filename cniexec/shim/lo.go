package shim

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// netnsError says that CNI_NETNS is not a usable network namespace. Gone marks a path that does
// not exist or is no network namespace (any more: a runtime unmounts the namespace before it
// removes the file), which DEL takes as done.
type netnsError struct {
	path   string
	reason string
	gone   bool
}

func (e *netnsError) Error() string { return e.path + ": " + e.reason }

func isNetnsGone(err error) bool {
	var ne *netnsError
	return errors.As(err, &ne) && ne.gone
}

// inNetnsPath runs fn on an OS thread that has entered the network namespace at path. The thread
// is locked to a goroutine of its own for the while; if it cannot return to the process's
// namespace, the goroutine ends still locked and the runtime discards the thread rather than run
// other goroutines in the pod's namespace.
func inNetnsPath(path string, fn func() error) error {
	target, err := openNetnsPath(path)
	if err != nil {
		return err
	}
	defer target.Close()
	done := make(chan error, 1) // the worker's one result; buffered so the worker never waits
	go func() {
		runtime.LockOSThread()
		stranded, err := inNetnsLocked(target, fn)
		if !stranded {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// inNetnsLocked does inNetnsPath's work on the locked thread. It reports whether the thread is
// stranded in the other namespace, and then must stay locked.
func inNetnsLocked(target *os.File, fn func() error) (stranded bool, err error) {
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return false, fmt.Errorf("open this thread's network namespace: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		if errors.Is(err, unix.EINVAL) { // a namespace of another kind
			return false, &netnsError{path: target.Name(), reason: "not a network namespace"}
		}
		return false, fmt.Errorf("enter network namespace %s: %w", target.Name(), err)
	}
	fnErr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return true, errors.Join(fnErr, fmt.Errorf("return from network namespace %s: %w", target.Name(), err))
	}
	return false, fnErr
}

// openNetnsPath opens path and makes sure it is a network namespace: a bind mount of one (nsfs)
// or a /proc/PID/ns/net file.
func openNetnsPath(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &netnsError{path: path, reason: "no such file", gone: true}
	}
	if err != nil {
		return nil, &netnsError{path: path, reason: err.Error()}
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		f.Close()
		return nil, &netnsError{path: path, reason: "statfs: " + err.Error()}
	}
	if fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		f.Close()
		return nil, &netnsError{path: path, reason: "not a network namespace", gone: true}
	}
	return f, nil
}

// loFlags reads lo's interface flags through sock, a socket of the namespace.
func loFlags(sock int) (*unix.Ifreq, uint16, error) {
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return nil, 0, err
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFFLAGS, ifr); err != nil {
		return nil, 0, fmt.Errorf("read flags of lo: %w", err)
	}
	return ifr, ifr.Uint16(), nil
}

// setLoFlag sets lo up or down in the current thread's network namespace.
func setLoFlag(up bool) error {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(sock)
	ifr, flags, err := loFlags(sock)
	if err != nil {
		return err
	}
	want := flags &^ unix.IFF_UP
	if up {
		want = flags | unix.IFF_UP
	}
	if want == flags {
		return nil
	}
	ifr.SetUint16(want)
	if err := unix.IoctlIfreq(sock, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set flags of lo: %w", err)
	}
	return nil
}

// setLoUp sets lo up in the current thread's network namespace and returns its first address of
// each family: the kernel gives lo 127.0.0.1/8, and ::1/128 where IPv6 is on, as it comes up.
func setLoUp() ([]netip.Prefix, error) {
	if err := setLoFlag(true); err != nil {
		return nil, err
	}
	var addrs []netip.Prefix
	v4, err := loAddr4()
	if err != nil {
		return nil, err
	}
	if v4.IsValid() {
		addrs = append(addrs, v4)
	}
	v6, err := loAddr6()
	if err != nil {
		return nil, err
	}
	if v6.IsValid() {
		addrs = append(addrs, v6)
	}
	return addrs, nil
}

func setLoDown() error { return setLoFlag(false) }

// loIsUp reports whether lo is up in the current thread's network namespace.
func loIsUp() (bool, error) {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(sock)
	_, flags, err := loFlags(sock)
	if err != nil {
		return false, err
	}
	return flags&unix.IFF_UP != 0, nil
}

// loAddr4 is lo's primary IPv4 address with its prefix length, or the zero Prefix when it has none.
func loAddr4() (netip.Prefix, error) {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(sock)
	get := func(req uint) (netip.Addr, error) {
		ifr, err := unix.NewIfreq("lo")
		if err != nil {
			return netip.Addr{}, err
		}
		if err := unix.IoctlIfreq(sock, req, ifr); err != nil {
			return netip.Addr{}, err
		}
		b, err := ifr.Inet4Addr()
		if err != nil {
			return netip.Addr{}, err
		}
		return netip.AddrFrom4([4]byte(b)), nil
	}
	addr, err := get(unix.SIOCGIFADDR)
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return netip.Prefix{}, nil
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read IPv4 address of lo: %w", err)
	}
	mask, err := get(unix.SIOCGIFNETMASK)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read IPv4 netmask of lo: %w", err)
	}
	bits := maskBits(mask.As4())
	if bits < 0 {
		return netip.Prefix{}, fmt.Errorf("IPv4 netmask of lo %s is not contiguous", mask)
	}
	return netip.PrefixFrom(addr, bits), nil
}

// maskBits is the prefix length of a contiguous netmask, -1 for any other.
func maskBits(m [4]byte) int {
	v := uint32(m[0])<<24 | uint32(m[1])<<16 | uint32(m[2])<<8 | uint32(m[3])
	ones := 0
	for v&(1<<31) != 0 {
		ones++
		v <<= 1
	}
	if v != 0 {
		return -1
	}
	return ones
}

// loAddr6 is lo's first IPv6 address, or the zero Prefix when the namespace has no IPv6 on lo
// (disable_ipv6, or a kernel booted with ipv6.disable=1, which has no if_inet6 at all).
func loAddr6() (netip.Prefix, error) {
	// /proc/thread-self/net shows the thread's namespace; /proc/net is the main thread's.
	data, err := os.ReadFile("/proc/thread-self/net/if_inet6")
	if errors.Is(err, os.ErrNotExist) {
		return netip.Prefix{}, nil
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read IPv6 addresses: %w", err)
	}
	return parseIfInet6(data, "lo")
}

// parseIfInet6 finds the first address of dev in the text of /proc/net/if_inet6: one address a
// line, as 32 hex digits, interface index, prefix length, scope and flags (hex), device name.
func parseIfInet6(data []byte, dev string) (netip.Prefix, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) != 6 || string(f[5]) != dev {
			continue
		}
		var raw [16]byte
		if len(f[0]) != 2*len(raw) {
			return netip.Prefix{}, fmt.Errorf("if_inet6: bad address %q", f[0])
		}
		if _, err := hex.Decode(raw[:], f[0]); err != nil {
			return netip.Prefix{}, fmt.Errorf("if_inet6: bad address %q: %w", f[0], err)
		}
		bits, err := strconv.ParseUint(string(f[2]), 16, 8)
		if err != nil || bits > 128 {
			return netip.Prefix{}, fmt.Errorf("if_inet6: bad prefix length %q", f[2])
		}
		return netip.PrefixFrom(netip.AddrFrom16(raw), int(bits)), nil
	}
	if err := sc.Err(); err != nil {
		return netip.Prefix{}, fmt.Errorf("if_inet6: %w", err)
	}
	return netip.Prefix{}, nil
}
