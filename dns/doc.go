// Package dns is the node-local DNS server: it listens on the node-local address
// (169.254.20.10), answers the cluster domain from the zone the cluster state feeds, and forwards
// and caches everything else.
//
// Queries are read from the request's wire form (package wire). The common ones — a name in
// the cluster domain, a cached external name, a search-path miss — are answered without
// unpacking the request, on the goroutine that read it, and without allocating: datagrams move in
// batches of one recvmmsg and one sendmmsg (package internal/mmsg), and each reader keeps one
// string per question name it sees often (wire.Names). Queries that need an upstream go to a
// goroutine of their own, bounded in number, so one slow upstream cannot stall the answers
// served from memory.
package dns
