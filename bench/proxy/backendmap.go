package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nodenet sends a Service port without a chain of its own (a ClusterIP-only port without
// affinity) to a pick chain "pick-N-v4" shared by every such port with N endpoints; that chain
// DNATs through the table's map backends-v4, keyed daddr . l4proto . dport . index (index below
// N, in host byte order) with the endpoint's address . port as the value. A whole map at 10,000
// Services is too large to dump every millisecond, so the benchmark asks for the port's N
// elements by key.

// pickCount parses N from a pick chain's name; ok is false for other chains.
func pickCount(chain string) (int, bool) {
	rest, ok := strings.CutPrefix(chain, "pick-")
	if !ok {
		return 0, false
	}
	num, ok := strings.CutSuffix(rest, "-v4")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(num)
	return n, err == nil && n > 0
}

// pickedEndpoints returns the backends of the TCP Service port key in table's backend map, read
// element by element. An element missing (the port's chain or count changed since the Service
// map was read) is errMissing.
func pickedEndpoints(conn *netlink.Conn, table string, key netip.AddrPort, n int) ([]target, error) {
	out := make([]target, 0, n)
	for i := range n {
		k := append(key.Addr().AsSlice(), unix.IPPROTO_TCP, 0, 0, 0)
		k = binary.BigEndian.AppendUint16(k, key.Port())
		k = append(k, 0, 0)
		k = binary.NativeEndian.AppendUint32(k, uint32(i))
		val, err := getElement(conn, table, "backends-v4", k)
		if err != nil {
			return nil, fmt.Errorf("backend %d of %s in %s: %w", i, key, table, err)
		}
		out = append(out, target{data: val})
	}
	return out, nil
}

// getElement asks the kernel for one element of an inet table's map (NFT_MSG_GETSETELEM without
// a dump) and returns its value.
func getElement(conn *netlink.Conn, table, set string, key []byte) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(unix.NFTA_LIST_ELEM, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(unix.NFTA_DATA_VALUE, key)
				return nil
			})
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, errMissing
		}
		return nil, err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		if val, ok := elementValue(m.Data[4:]); ok {
			return val, nil
		}
	}
	return nil, errMissing
}

// elementValue finds the value of the first element in a NEWSETELEM message's attributes.
func elementValue(b []byte) ([]byte, bool) {
	path := []uint16{unix.NFTA_SET_ELEM_LIST_ELEMENTS, unix.NFTA_LIST_ELEM, unix.NFTA_SET_ELEM_DATA, unix.NFTA_DATA_VALUE}
	for depth, want := range path {
		ad, err := netlink.NewAttributeDecoder(b)
		if err != nil {
			return nil, false
		}
		found := false
		for ad.Next() {
			if ad.Type() == want {
				b, found = ad.Bytes(), true
				break
			}
		}
		if !found {
			return nil, false
		}
		if depth == len(path)-1 {
			return b, true
		}
	}
	return nil, false
}
