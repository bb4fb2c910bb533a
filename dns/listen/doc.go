// Package listen opens the node-local DNS sockets and keeps them open across restarts of the
// daemon, so that pods see no DNS outage while it restarts, crashes or is upgraded.
//
// # Sockets
//
// For each DNS address (169.254.20.10 by default) Open makes UDP sockets in one SO_REUSEPORT
// group, so the kernel spreads queries over as many readers, and one TCP listener. Each is bound
// to the address itself: a wildcard would answer on the node's own addresses and make the node an
// open resolver. IP_FREEBIND lets them bind before the address is on its interface, and the UDP
// sockets get receive buffers large enough to hold what arrives during a restart.
//
// # Why a keeper process
//
// A socket lives as long as some process holds a descriptor of it, and while it lives the kernel
// queues what arrives for it. When the only holder is the daemon, every exit closes the sockets:
// queries that arrive before the next daemon binds are refused (ICMP port unreachable), and what
// sat unread in the queues is lost. A graceful handover from the old daemon to the new one (the
// way some proxies reload) covers SIGTERM only; after kill -9, an OOM kill or a crash nothing is
// left that could hand over.
//
// So a second, tiny process holds duplicates of the sockets: `nodenet dns-keeper --socket PATH`,
// in the spirit of systemd's file descriptor store. It never reads from them, it only keeps them
// open. The daemon asks it first; when it holds sockets for the configured endpoints the daemon
// takes duplicates of those, and the queries that queued while no daemon ran are read and
// answered. TCP connections that completed their handshake meanwhile wait in the listener's
// backlog the same way. Otherwise (first start, a changed configuration) the daemon binds new
// sockets and deposits duplicates with the keeper, which then closes what it held: a stale
// reuseport socket that nobody reads would swallow its share of the queries.
//
// Because the keeper is its own process (in Kubernetes its own container, beside the daemon's),
// it also covers a SIGTERM followed by a new start, and a new image of the daemon's container,
// while the keeper's container keeps running. If the keeper itself restarts while the daemon
// runs, the daemon deposits its sockets again; if no keeper runs, the daemon works alone and
// says that its restarts will drop queries.
//
// The protocol between the two (protocol.go) is two requests over a unix SOCK_SEQPACKET socket
// of mode 0600, with the descriptors passed as SCM_RIGHTS, versioned, and checked against the
// kernel on both sides: a descriptor counts as the socket the kernel says it is.
package listen
