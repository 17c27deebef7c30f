// Package xsk is the AF_XDP datapath: DNS queries that the XDP program in
// bpf/ steers into an XSKMAP arrive here as raw Ethernet frames, and the
// answers leave as raw frames, without the kernel's socket layer.
//
// # The low layer: sockets, UMEM, rings, frames
//
// A [Socket] is one AF_XDP socket bound to one (interface, queue) with its
// own UMEM: an anonymous mmap of NumFrames frames of FrameSize bytes, and
// four rings shared with the kernel (fill and completion for the UMEM, RX
// and TX for the socket). Its methods move batches of descriptors through
// those rings and never allocate. The rings are single-producer
// single-consumer: each method that touches a ring must be called by one
// goroutine at a time, and [Frames] (a free list of frame addresses) is
// likewise not safe for concurrent use.
//
// Every frame is owned by exactly one party at a time:
//
//	free list --Fill--> kernel --Receive--> caller --Transmit--> kernel --Complete--> caller
//
// The caller owns a frame from Receive (or Complete, or the free list)
// until it hands it to Transmit or Fill; the kernel owns it from Fill
// until it comes back from Receive, and from Transmit until it comes back
// from Complete. Touching a frame the kernel owns corrupts packets
// silently; losing track of one leaks it for the socket's life.
//
// Frame layout. The UMEM is registered with headroom 0 and aligned chunks,
// so the kernel writes a received packet at frame base + XDP_PACKET_HEADROOM
// (256 bytes, [Headroom]); the umem headroom field would only add room
// before that. The RX descriptor's Addr already includes the offset (and
// any bpf_xdp_adjust_head the program did), so code takes the packet at
// the descriptor's Addr, [Socket.Packet](d.Addr)[:d.Len], and never assumes
// 256. A reply may grow the packet up to the end of its frame, but the
// link's MTU is the caller's limit: nothing fragments an AF_XDP frame, and
// the device drops one that is too long. TX descriptors may point anywhere
// inside one frame: in-place replies reuse the RX Addr, replies built into
// a free frame start at its base. Completion returns the TX Addr unchanged;
// [Frames.Put] rounds any address down to its frame.
//
// Binding tries zero-copy first unless told otherwise and falls back to
// copy mode (veth has no zero-copy); always with XDP_USE_NEED_WAKEUP, so
// the kernel is woken only when a ring flag asks for it — in copy mode TX
// always needs the sendto kick, which [Socket.Transmit] does.
//
// frame.go is the packet side, pure functions with no kernel: [Parse]
// checks an Ethernet (802.1Q/QinQ) + IPv4/IPv6 + UDP frame and returns a
// [View]; [Reply] turns the same frame into the answer in place; [Header]
// and [BuildReply] keep the headers (at most [MaxHeader] bytes) of a query
// whose answer comes later (a cache miss) and build the reply frame in any
// free frame.
// Checksums are always computed in full: senders on veth leave partial
// (CHECKSUM_PARTIAL) sums in their packets, so patching them incrementally
// would propagate garbage.
//
// # The server and its loops
//
// A [Server] is one listener's AF_XDP datapath (server.go): per interface it
// loads the bpf/ program with the listener's addresses and ACL, attaches it
// through a bpf_link (native, generic, or auto: native then generic), opens
// one Socket per receive queue (counted in sysfs) and registers each in the
// program's XSKMAP. The kernel sockets of datapath/udp stay bound beside it:
// whatever the program passes, and every packet of a queue without a socket,
// reaches them. Stop detaches first, so new packets go to those sockets,
// then ends the loops, waits for misses still resolving and closes.
//
// A loop (loop.go) serves one socket on one goroutine, parked in Go's
// network poller (the socket's descriptor is non-blocking and pollable)
// while the RX ring is empty, so it works at one P. With AffinityAuto (the
// default; follow.go) a loop whose queue's packets nearly all come from
// one CPU's softirq (a NIC's queue interrupt, a veth's sender) runs on an
// OS thread of its own bound to that CPU, so the RX ring, the frames and
// the transmit kick stay in its caches. That thread runs SCHED_BATCH: woken
// by the softirq, it does not preempt the task on its CPU, and packets
// gather into larger batches. Parking costs a bound loop two thread
// hand-offs instead of none. Per
// batch it parses each frame, asks the forwarder's non-blocking Answer with
// the query read in place in the UMEM, and writes a hit (cache, zone,
// block, FORMERR) into the same frame with [Reply]; the replies go on the
// TX ring together, and the kick (a system call; in copy mode it runs the
// device's transmit path) waits until the RX ring is empty or 128 replies
// are queued. An answer larger than the frame or the interface's MTU
// allows is truncated with TC set (the forwarder already cut it to the
// client's EDNS size). A miss goes to Resolve with its headers saved; its
// answer comes back on a resolving goroutine and waits in the loop's
// outbox, whose goroutine builds the reply frames from the saved headers in
// free frames and transmits them as one batch. The TX and completion rings
// and the free list are shared by the loop and the outbox under one mutex,
// taken once per batch; the RX and fill rings are the loop's alone. A
// quarter of the frames is kept out of the fill ring for replies of misses.
// Nothing is allocated per packet on a hit (TestLoopHitAllocs).
//
// # The in-kernel answer tier
//
// tier.go keeps the hottest cached answers in the XDP program's answers map
// (bpf/, an LRU), where the program answers them itself with XDP_TX. It
// runs where Config.KernelCache says: auto means interfaces attached in
// native mode, except veth (native XDP_TX frames on a veth arrive only when
// the peer has an XDP program too); on means every interface; off, none.
// The program is loaded without the tier when it is off, and again without
// it when the kernel cannot verify it (logged).
//
// Each loop counts its cache hits per question (a 4096-slot table of hashes,
// one-second windows, no allocation) and copies a query that reaches
// KernelCache.Hits in a window into a bounded candidate list. Every 250 ms
// one goroutine takes the candidates and, for each question the program
// would answer exactly (exact mirrors xdp.c), asks the cache for its answer
// (Peek: no counters, no CLOCK bit) and promotes it unless it is SERVFAIL,
// truncated, larger than KernelCache.MaxAnswer or due to expire within 2 s.
// On the same tick it reads the program's per-slot hit counters, demotes
// entries with no kernel hit for a second or no longer in the cache, and
// rewrites the others with their TTLs as of now. Entries the kernel served
// since the last tick are reported to the forwarder (Peeker.Hot), which
// prefetches one that is due as a userspace hit would: the cache never sees
// the kernel's hits. All writes of a tick are
// one batch delete and one batch update per interface.
//
// TTL bound: an entry answers until 1 s less 20 ms (the coarse clock's
// lag) after the refresh that wrote it began, never past the cache entry's
// expiry, with TTLs read after that start; hot entries are rewritten every
// 250 ms. So a kernel answer's TTL is at most 1 s above what the cache
// would give at that moment (the cache ages in whole seconds), and an
// entry whose rewrite stops leaves within a second. Answers are no larger
// than the smallest tier interface's MTU allows in one IPv6 packet.
//
// Coherence: the cache calls OnChange (wired to Server.InvalidateKernel)
// with a key before and after it stores a new answer for it, and after it
// evicts one; a promoted key is then deleted from the maps at once, and a
// key stored while a refresh is peeking is dropped from that refresh's
// batch (pending) instead of making the Put wait. A reload holds every tier
// (LockKernelCache), empties the maps, swaps the pipeline, and only then
// lets the tiers promote again, from the new cache. Stop detaches the tier
// from its programs before they close.
package xsk
