package proxy

import (
	"encoding/binary"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/internal/nftbatch"
)

// A set's user data is the kernel's to keep and nft's to read: how to print the set's keys, and
// so how to parse them back from a listing (nft -f). It is a list of TLVs, a one-byte type, a
// one-byte length and the value, nested for a "typeof" key (libnftnl's udata). google/nftables
// writes only a key byte order, and big-endian for every anonymous set; two kinds of the proxy's
// sets need more:
//
//   - the backends maps, keyed by daddr . l4proto . dport . numgen: nft can name the last part's
//     type only from a typeof key, and without one it lists the pick rule with a key it then
//     refuses to load ("datatype mismatch");
//   - the anonymous maps a chained port's rule looks its numgen index up in: the index is in
//     host order, and marked big-endian nft prints 1 as 16777216, which it would load back as a
//     different key.
const (
	udataKeyByteOrder  = 0 // NFTNL_UDATA_SET_KEYBYTEORDER
	udataDataByteOrder = 1 // NFTNL_UDATA_SET_DATABYTEORDER
	udataKeyTypeof     = 3 // NFTNL_UDATA_SET_KEY_TYPEOF
	udataDataTypeof    = 4 // NFTNL_UDATA_SET_DATA_TYPEOF
	udataDataInterval  = 6 // NFTNL_UDATA_SET_DATA_INTERVAL

	// Within a typeof: the kind of expression, then what it needs.
	udataTypeofExpr = 0
	udataTypeofData = 1

	byteOrderHost = 1 // nft's BYTEORDER_HOST_ENDIAN; 0 (unknown) for concatenations

	// nft's expression kinds.
	nftExprPayload = 7
	nftExprMeta    = 9
	nftExprConcat  = 13
	nftExprNumgen  = 23

	// nft's protocol descriptions and their header fields, as a payload's typeof names them.
	nftProtoTH   = 11 // transport header, any protocol
	nftProtoIP   = 12
	nftProtoIP6  = 13
	nftIPDaddr   = 12
	nftIP6Daddr  = 9
	nftTHDport   = 2
	nftNumgenMod = 2 // any modulus: typeof records the type, the rules their own modulus
)

// udataTLV appends one TLV.
func udataTLV(b []byte, typ byte, value []byte) []byte {
	return append(append(b, typ, byte(len(value))), value...)
}

func udataU32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// typeofExpr is one expression of a typeof: its kind and its own TLVs.
func typeofExpr(kind uint32, data []byte) []byte {
	return udataTLV(udataTLV(nil, udataTypeofExpr, udataU32(kind)), udataTypeofData, data)
}

func typeofPayload(desc, field uint32) []byte {
	return typeofExpr(nftExprPayload, udataTLV(udataTLV(nil, 0, udataU32(desc)), 1, udataU32(field)))
}

// typeofConcat joins expressions, each a TLV numbered by its place.
func typeofConcat(parts ...[]byte) []byte {
	var data []byte
	for i, p := range parts {
		data = udataTLV(data, byte(i), p)
	}
	return typeofExpr(nftExprConcat, data)
}

// backendsUserData is the user data of family f's backends map: typeof daddr . meta l4proto .
// th dport . numgen random mod 2 : daddr . th dport.
func backendsUserData(f Family) []byte {
	daddr := typeofPayload(nftProtoIP, nftIPDaddr)
	if f == IPv6 {
		daddr = typeofPayload(nftProtoIP6, nftIP6Daddr)
	}
	dport := typeofPayload(nftProtoTH, nftTHDport)
	l4proto := typeofExpr(nftExprMeta, udataTLV(nil, 0, udataU32(unix.NFT_META_L4PROTO)))
	numgen := typeofExpr(nftExprNumgen, udataTLV(udataTLV(udataTLV(nil, 0, udataU32(unix.NFT_NG_RANDOM)), 1, udataU32(nftNumgenMod)), 2, udataU32(0)))
	b := udataTLV(nil, udataKeyByteOrder, udataU32(0))
	b = udataTLV(b, udataDataByteOrder, udataU32(0))
	b = udataTLV(b, udataKeyTypeof, typeofConcat(daddr, l4proto, dport, numgen))
	b = udataTLV(b, udataDataTypeof, typeofConcat(daddr, dport))
	return udataTLV(b, udataDataInterval, udataU32(0))
}

var (
	backendsUserDataV4 = backendsUserData(IPv4)
	backendsUserDataV6 = backendsUserData(IPv6)
	// hostOrderKeys marks an anonymous set's integer keys as host order.
	hostOrderKeys = udataTLV(udataTLV(nil, udataKeyByteOrder, udataU32(byteOrderHost)), udataDataByteOrder, udataU32(0))
)

// setUserData is the user data the proxy gives the sets it creates (nftbatch.Batch.SetUserData).
func setUserData(s nftbatch.SetInfo) []byte {
	switch {
	case s.Name == mapBackends(IPv4):
		return backendsUserDataV4
	case s.Name == mapBackends(IPv6):
		return backendsUserDataV6
	case s.Flags&unix.NFT_SET_ANONYMOUS != 0 && s.KeyType == nftables.TypeInteger.GetNFTMagic() && s.KeyLen == nftables.TypeInteger.Bytes:
		// Only numgen indices key the proxy's anonymous sets with a bare integer.
		return hostOrderKeys
	}
	return nil
}
