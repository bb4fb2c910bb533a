package lab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// HostNetworkState describes the host's own network namespace: link names, routes of every
// table, nftables tables, and the leftover namespaces whose names start with prefix. A test suite
// must leave it as it was.
func HostNetworkState(prefix string) (string, error) {
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-o", "link", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
		{"nft", "list", "tables"},
	} {
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			return "", fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if args[1] == "-o" {
				// Only the names: counters and carrier state of the host's links are not ours.
				if f := strings.Fields(line); len(f) > 1 {
					line = f[1]
				}
			}
			b.WriteString(line + "\n")
		}
	}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			b.WriteString("leftover netns " + e.Name() + "\n")
		}
	}
	return b.String(), nil
}
