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
// [Frames.Put] and [Socket.Frame] round any address down to its frame.
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
package xsk
