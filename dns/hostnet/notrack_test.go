package hostnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBuildNotrack(t *testing.T) {
	got := buildNotrack([]netip.Addr{netip.MustParseAddr("169.254.20.10"), netip.MustParseAddr("fd00::53")}, 53).String()
	want, err := os.ReadFile(filepath.Join("testdata", "notrack.golden"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("notrack chains (-want +got):\n%s", diff)
	}
}

func TestValidateAddrs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		addrs []string
		want  string // part of the error; "" for none
	}{
		{"one IPv4", []string{"169.254.20.10"}, ""},
		{"both families", []string{"169.254.20.10", "fd00::53"}, ""},
		{"none", nil, "no DNS listen address"},
		{"unspecified", []string{"0.0.0.0"}, "must be a unicast, non-loopback address"},
		{"IPv6 unspecified", []string{"::"}, "must be a unicast, non-loopback address"},
		{"loopback", []string{"127.0.0.1"}, "must be a unicast, non-loopback address"},
		{"multicast", []string{"224.0.0.251"}, "must be a unicast, non-loopback address"},
		{"mapped", []string{"::ffff:169.254.20.10"}, "use the IPv4 form 169.254.20.10"},
		{"zone", []string{"fe80::1%eth0"}, "zones are not allowed"},
		{"IPv6 link-local", []string{"fe80::1"}, "link-local"},
		{"twice", []string{"169.254.20.10", "169.254.20.10"}, "given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var addrs []netip.Addr
			for _, s := range tc.addrs {
				addrs = append(addrs, netip.MustParseAddr(s))
			}
			err := validateAddrs(addrs)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("validateAddrs(%v) = %v, want no error", tc.addrs, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("validateAddrs(%v) = %v, want an error containing %q", tc.addrs, err, tc.want)
			}
		})
	}
}
