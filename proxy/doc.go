// Package proxy computes nodenet's Service load-balancing ruleset.
//
// This is the first of the three nftables layers described in
// shared/STYLE.md: Build is a pure function from a State (Services,
// endpoints and node facts, in small types of our own) to a Model, the
// ruleset as plain data. Later layers translate each Model element 1:1 into
// google/nftables expressions and program it in one netlink batch.
//
// The Model can be rendered as nft-like text (Model.String) for golden tests
// and `nodenet inspect`, and evaluated by Trace, which walks it the way the
// kernel would for a new connection.
package proxy
