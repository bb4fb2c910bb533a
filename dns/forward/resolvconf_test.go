package forward

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestUpstreamsFromResolvConf(t *testing.T) {
	self := []netip.Addr{netip.MustParseAddr("169.254.20.10")}
	tests := []struct {
		name    string
		file    string
		want    []string
		wantErr string
	}{
		{
			name: "nameservers in order, other lines ignored",
			file: `# generated
search default.svc.cluster.local svc.cluster.local
nameserver 10.0.0.2
nameserver 2001:db8::53
options ndots:5 timeout:2
; comment
nameserver 10.0.0.3 # trailing comment
`,
			want: []string{"10.0.0.2:53", "[2001:db8::53]:53", "10.0.0.3:53"},
		},
		{
			name: "the cache itself and loopback stubs left out",
			file: "nameserver 169.254.20.10\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\n",
			want: []string{"192.0.2.53:53"},
		},
		{
			name: "duplicates and mapped addresses",
			file: "nameserver 192.0.2.53\nnameserver ::ffff:192.0.2.53\nnameserver ::ffff:169.254.20.10\n",
			want: []string{"192.0.2.53:53"},
		},
		{
			name: "IPv6 link-local with zone",
			file: "nameserver fe80::1%eth0\n",
			want: []string{"[fe80::1%eth0]:53"},
		},
		{
			name:    "systemd-resolved stub only",
			file:    "nameserver 127.0.0.53\noptions edns0 trust-ad\n",
			wantErr: "lists no nameserver to forward to (127.0.0.53 is a loopback stub resolver); set dns.upstreams, or on a node with systemd-resolved point the daemon at /run/systemd/resolve/resolv.conf",
		},
		{
			name:    "only itself, unspecified and garbage",
			file:    "nameserver 169.254.20.10\nnameserver 0.0.0.0\nnameserver dns.example\nnameserver\n",
			wantErr: `(169.254.20.10 is this node-local DNS cache itself; 0.0.0.0 is the unspecified address, meaning this host; "dns.example" is not an IP address)`,
		},
		{
			name:    "no nameserver at all",
			file:    "search example.com\n",
			wantErr: "lists no nameserver; set dns.upstreams",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(tt.file), 0o644); err != nil {
				t.Fatal(err)
			}
			ups, err := UpstreamsFromResolvConf(path, self)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("err = %v, want one naming %s and containing %q", err, path, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, u := range ups {
				got = append(got, u.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestUpstreamsFromMissingResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing")
	if _, err := UpstreamsFromResolvConf(path, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("err = %v, want one naming %s", err, path)
	}
}
