// Package forward answers every name outside the cluster domain: a caching
// forwarder in the spirit of CoreDNS's cache and forward plugins, as
// NodeLocal DNSCache runs them, hardened against cache poisoning and query
// storms.
//
// The server asks AppendCached first: a cached response in wire format, ID
// and TTLs patched in place, with no allocation. On a miss it calls Resolve,
// which answers from the cache, joins an identical upstream query already in
// flight, or sends a new one (bounded by MaxInFlight), and falls back to
// stale data (RFC 8767) when the upstreams fail.
//
// What an answer from upstream must pass before it is used: a connected UDP
// socket, opened per exchange on a kernel-chosen random port, receives only
// datagrams from the address asked; the ID (crypto-random, new for every
// exchange) and the question must match; the answer section keeps only the
// question name and its CNAME chain, authority and additional only names at
// or below the zone the answer is about (bailiwick.go).
//
// The cache holds responses as packed messages without an OPT record: the
// server adds its own OPT to answers of EDNS queries.
package forward
