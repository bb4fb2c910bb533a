// Package ipam is the node's pod address allocator: it hands out addresses
// from the node's podCIDRs to pod interfaces, one per address family, and
// keeps them in a bbolt database under the state directory so that they
// survive daemon restarts and crashes.
//
// # Allocation
//
// Each range keeps a cursor, the address it handed out last. The next
// allocation takes the first free address after the cursor and wraps at the
// end of the range, as CNI host-local does, so an address just released is
// not reused until the range has cycled: a stale packet or conntrack entry
// for a deleted pod does not reach its successor. The network address, the
// gateway (first host, which the bridge owns), the IPv4 broadcast and the
// IPv6 subnet-router anycast are never handed out.
//
// The allocator keeps the set of held addresses and a count per range in
// memory. Exhaustion is known from the count without a scan, and the walk
// from the cursor to a free address is short in steady state, so a /64 works
// like a /24. Get and List answer from memory and never wait for the disk.
//
// # Why the state is crash-safe
//
// The invariants are: an address is never in two allocations, and an
// allocation the runtime was told about is never forgotten. Both must hold
// if the process is killed (SIGKILL, OOM, node power loss) at any instant.
//
// bbolt is a copy-on-write B+tree. A commit writes the changed pages to free
// space, fdatasyncs them, then writes the new meta page (which names the new
// root and carries a checksum) and fdatasyncs again. The two meta pages are
// used alternately and the one with the highest valid transaction id wins
// when the file is opened, so a commit cut short leaves the previous tree
// exactly as it was: each transaction is all or nothing, and durable once
// Commit returns. The file lock makes a second daemon on the same state
// directory fail at once instead of writing beside the first.
//
// On top of that, ordering carries the argument:
//
//   - Allocate reserves the address in memory, commits the allocation, and
//     only then returns it. The runtime can only ever see addresses that are
//     already on disk, so none it uses is forgotten.
//   - Release commits the delete before the address leaves the in-memory
//     set, so it cannot be handed out again while the old allocation might
//     still reappear from disk.
//   - On open the in-memory state is rebuilt from the database alone. A
//     reservation whose commit never finished is simply not there; its
//     address was never returned to anyone, so it is free again.
//
// An allocation can be committed and the process killed before Allocate
// returns. The address is then held by a container the runtime never heard
// about. That leaks an address, never duplicates one: the runtime retries the
// ADD with the same container ID and interface and gets the same allocation
// back, or it gives up and sends DEL, or the daemon's reconciliation (CNI GC
// with the runtime's list of live attachments, or a netns that no longer
// exists) calls Release for it.
//
// Concurrent Allocate calls reserve under one mutex and commit outside it
// with bbolt's Batch, so a burst of pod starts shares transactions and
// fsyncs; a commit that fails undoes its reservation and returns the error.
//
// Allocations whose addresses fall outside the current ranges (the podCIDRs
// changed) are kept and listed until released; new ones come from the
// current ranges.
package ipam
