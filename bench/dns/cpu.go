package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// sched is how the measured programs are scheduled on their CPUs. Both CPUs of the machine are
// shared with other work, and a server that wakes for each datagram suffers most from it: under
// the fair scheduler a woken server waits for the running task's slice, whatever its nice value,
// and its socket overflows meanwhile. Round-robin real-time priority 1 runs it at once; the
// kernel's real-time throttling still leaves the other work its share of every second.
type sched struct {
	realtime bool
	nice     int // without realtime
}

func (s sched) String() string {
	if s.realtime {
		return "SCHED_RR priority 1"
	}
	return fmt.Sprintf("nice %d", s.nice)
}

// onCPU runs start on a thread bound to cpu and scheduled as s. A process that start forks
// inherits both from the first instruction on, with every thread it makes later: the way to pin
// a program (and `ip netns exec` in front of it) without a wrapper command.
func onCPU(cpu int, s sched, start func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine and takes its settings with it.
		runtime.LockOSThread()
		if err := pinThread(cpu, s); err != nil {
			errc <- err
			return
		}
		errc <- start()
	}()
	return <-errc
}

// pinThread binds the calling thread to cpu and schedules it as s (both are per thread on
// Linux).
func pinThread(cpu int, s sched) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("bind a thread to CPU %d: %w", cpu, err)
	}
	if s.realtime {
		if err := unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_RR, Priority: 1}, 0); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		return nil
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, 0, s.nice); err != nil {
		return fmt.Errorf("%s: %w", s, err)
	}
	return nil
}

// allowedCPUs is the union of the CPUs the threads of pid may run on, as /proc shows them
// ("0", "0-1"), to prove the binding held.
func allowedCPUs(pid int) (string, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		return "", fmt.Errorf("threads of pid %d: none found (%v)", pid, err)
	}
	var lists []string
	for _, t := range tasks {
		v, err := statusField(t, "Cpus_allowed_list")
		if err != nil {
			continue // a thread that ended since the glob
		}
		lists = append(lists, v)
	}
	slices.Sort(lists)
	return strings.Join(slices.Compact(lists), " "), nil
}

// memory is a process's resident set now and its peak, from /proc/PID/status.
type memory struct{ rss, hwm int64 }

func readMemory(pid int) (memory, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	var m memory
	for _, f := range []struct {
		key string
		dst *int64
	}{{"VmRSS", &m.rss}, {"VmHWM", &m.hwm}} {
		v, err := statusField(path, f.key)
		if err != nil {
			return memory{}, err
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
		if err != nil {
			return memory{}, fmt.Errorf("%s: %s %q: %w", path, f.key, v, err)
		}
		*f.dst = kb << 10
	}
	return m, nil
}

// statusField reads one "Key:\tvalue" line of a /proc status file.
func statusField(path, key string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == key {
			return strings.TrimSpace(v), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%s: no %s", path, key)
}
