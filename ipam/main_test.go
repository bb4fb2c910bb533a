package ipam

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) {
	// TestCrashSafety re-executes this binary as the process it kills.
	if dir := os.Getenv(crashDirEnv); dir != "" {
		os.Exit(crashChild(dir, os.Getenv(crashRunEnv)))
	}
	goleak.VerifyTestMain(m)
}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func ipsString(ips []netip.Prefix) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, " ")
}

// open opens an allocator on dir and closes it when the test ends.
func open(t *testing.T, dir string, ranges ...string) *Allocator {
	t.Helper()
	a, err := Open(Config{StateDir: dir, Ranges: prefixes(ranges...)}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return a
}
