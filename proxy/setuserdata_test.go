package proxy

import (
	"encoding/hex"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nftbatch"
)

// The backends maps' user data is what nft 1.0.6 itself writes for
// "typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport" (and the
// ip6 one), read from its netlink messages (nft --debug=mnl -f).
func TestBackendsUserData(t *testing.T) {
	const nftV4 = "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000"
	const nftV6 = "000400000000010400000000036000040d00000001580014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000"
	for f, want := range map[Family]string{IPv4: nftV4, IPv6: nftV6} {
		if got := hex.EncodeToString(backendsUserData(f)); got != want {
			t.Errorf("IPv%d:\n got %s\nwant %s", f, got, want)
		}
	}
}

func TestSetUserDataChoosesSets(t *testing.T) {
	for _, tc := range []struct {
		set  nftbatch.SetInfo
		want []byte
	}{
		{nftbatch.SetInfo{Name: "backends-v4"}, backendsUserDataV4},
		{nftbatch.SetInfo{Name: "backends-v6"}, backendsUserDataV6},
		{nftbatch.SetInfo{Name: "__map%d", Flags: unix.NFT_SET_ANONYMOUS | unix.NFT_SET_CONSTANT | unix.NFT_SET_MAP, KeyType: 4, KeyLen: 4}, hostOrderKeys},
		{nftbatch.SetInfo{Name: "__set%d", Flags: unix.NFT_SET_ANONYMOUS | unix.NFT_SET_CONSTANT | unix.NFT_SET_INTERVAL, KeyType: 7, KeyLen: 4}, nil},
		{nftbatch.SetInfo{Name: "service-ips-v4", Flags: unix.NFT_SET_MAP, KeyType: 0x1cc34d, KeyLen: 12}, nil},
	} {
		if got := setUserData(tc.set); string(got) != string(tc.want) {
			t.Errorf("%+v: % x, want % x", tc.set, got, tc.want)
		}
	}
}
