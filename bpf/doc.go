// Package bpf is xdoh's XDP program and its loader: it steers DNS queries
// for xdoh's listeners into the AF_XDP sockets of datapath/xsk and gives
// everything else to the kernel.
//
// # The program
//
// xdp_dns (xdp.c) parses Ethernet with up to two VLAN tags (802.1Q 0x8100,
// 802.1ad 0x88a8, in any order), IPv4 or IPv6, then UDP. It steers a packet
// only when all of this holds; otherwise it returns XDP_PASS and the kernel
// does what it always did:
//
//   - IPv4: IHL 5 (no options), not a fragment (MF clear, offset 0), a valid
//     header checksum (the kernel would drop a bad one, and AF_XDP bypasses
//     it); IPv6: UDP right after the fixed header (no extension headers).
//   - The IP length fits in the frame (Ethernet padding after it is fine),
//     the UDP length equals the IP payload length, and the UDP payload holds
//     at least a 12-byte DNS header. The UDP checksum is not checked here.
//   - The destination address and port are a listener's: the exact address
//     first, then the family's wildcard (unspecified address) on that port.
//
// Upstream answers to ephemeral ports, TCP, ICMP, ARP and health probes on
// other ports are therefore never touched. A steered packet whose listener
// has ACL drop on and whose source is outside the listener's allow list is
// XDP_DROP. A listener with the answers flag may then be answered from the
// answers map (below). Any other is bpf_redirect_map(&xsks,
// rx_queue_index, XDP_PASS), so a queue without a socket (or past the map's
// size) falls back to the kernel.
//
// Every packet increments exactly one per-CPU counter, under a Reason;
// Program.Counters sums them at scrape time. A redirected packet also
// counts in queue_cpus under its rx queue, on the CPU that ran the program.
//
// # The answer tier
//
// Loaded only with Options.Answers (a .rodata constant: otherwise the
// verifier never walks it, so a kernel that rejects it still loads the
// rest). For a listener with the answers flag, after the ACL (a listener
// with an allow list but no drop is answered here only for allowed
// sources; the others go on to userspace, which refuses them), the program
// answers a query from the answers map with XDP_TX when all of this holds,
// else it leaves the frame untouched and counts why (AnswerEvent):
//
//   - Source and destination are unicast: no multicast or broadcast MAC,
//     IPv4 source not in 0/8, 127/8, 224/4 or 240/4 (nor destination in the
//     last two), no IPv6 multicast either way, no source :: or ::1.
//   - The header: QR 0, opcode QUERY, TC 0, one question, no answer or
//     authority records, at most one additional record; the name has no
//     pointers and is at most AnswerNameMax (128) bytes in wire form.
//   - Nothing follows the question but, optionally, an OPT record at the
//     root with version 0 and no options, ending the message.
//   - The key (lower-cased name, type, class, and the OPT, DO, CD and RD
//     bits: the cache's key) is in the map, and bpf_ktime_get_coarse_ns is before
//     its expiry; the answer is no larger than the client's UDP size (512
//     without EDNS, else its OPT size, at most 4096).
//   - bpf_xdp_adjust_tail can grow the frame to the answer's size.
//
// The reply keeps the query's ID and question name (the client's letter
// case, 0x20), takes the rest of the stored response, swaps MACs,
// addresses and ports, sets TTL / hop limit 64, clears ECN, and carries a
// full IPv4 header checksum and UDP checksum. The UDP checksum costs no
// loop over the payload: userspace stores the 16-bit one's complement sum
// of the response without its ID and name (in memory order, each byte at
// its offset's parity), and the program adds the ID, the name (summed
// while it is read) and the headers. Helpers: bpf_map_lookup_elem,
// bpf_redirect_map, bpf_ktime_get_coarse_ns (5.11: the last tick's time, no
// clocksource read), bpf_xdp_adjust_tail; bounded loops
// (Linux 5.3); userspace uses the batch map operations (5.6).
//
// # Maps
//
// All multi-byte fields marked "network order" hold the bytes as they are on
// the wire; the Go side converts with hton16/hton32.
//
//	listeners  HASH, 1024 entries
//	  key   {port u16 (network order), family u8 (4 or 6), pad u8 (0), addr [16]u8}
//	        addr is netip.Addr.As16 of the destination: IPv4 as ::ffff:a.b.c.d,
//	        the wildcard as ::ffff:0.0.0.0 (family 4) or :: (family 6)
//	  value {id u32, flags u32}   flags bit 0: ACL drop, 1: has an allow
//	        list, 2: answers from the answers map
//	acl4  LPM_TRIE, BPF_F_NO_PREALLOC, 65536 entries
//	  key   {prefixlen u32, id u32 (network order), addr [4]u8}
//	acl6  LPM_TRIE, BPF_F_NO_PREALLOC, 65536 entries
//	  key   {prefixlen u32, id u32 (network order), addr [16]u8}
//	        prefixlen = 32 + the prefix's bits: the listener id is the first
//	        32 bits of the prefix, so one trie holds every listener's list.
//	        The value (u32) is unused.
//	xsks  XSKMAP, Options.Queues entries (default 64): rx queue → AF_XDP socket
//	counters  PERCPU_ARRAY, NumReasons entries: u64 packets per Reason
//	queue_cpus  PERCPU_ARRAY, Options.Queues entries: u64 packets redirected
//	        to the queue's socket, per CPU (Program.QueueCPUs): the CPU whose
//	        softirq fills that socket's RX ring, which its loop follows
//	answers  LRU_HASH, Options.AnswerEntries (default 4096, at most 65536)
//	        + 128 per possible CPU: the LRU evicts to keep that many free
//	        nodes per CPU, and userspace bounds itself to AnswerEntries
//	  key   {hash u64, qtype u16, qclass u16 (network order), flags u8 (Key*),
//	         name_len u8, pad u16}
//	        hash: of the lower-cased wire name, zero-padded to 8 bytes, as
//	        little-endian u64 words w: h = seed; h = (h ^ w) * 0x9e3779b97f4a7c15
//	        for each; hash = h ^ h>>32. The seed (.rodata name_seed) is random
//	        per process. A 16-byte key hashes and compares fast; the entry's
//	        name is compared after the lookup, so a collision is a miss.
//	  value {gen u64, expires u64 (CLOCK_MONOTONIC_COARSE ns), slot u32,
//	         csum u32, len u16, pad [3]u16, name [128]u8 (lower-cased,
//	         zero-padded), data [1232]u8, gen_end u64}
//	        A preallocated map gives a replaced element's memory to the next
//	        update at once, while the program may still be copying it: each
//	        write carries a new gen at both ends (PutAnswers), and a reply
//	        whose entry's gens changed during the copy is dropped
//	        (drop_torn; the client retries) instead of sent.
//	answer_hits  PERCPU_ARRAY, Options.AnswerEntries: u64 XDP_TX answers per slot
//	answer_counters  PERCPU_ARRAY, NumAnswerEvents: u64 queries per AnswerEvent
//	scratch  PERCPU_ARRAY, 1 entry: a query's lower-cased name and its length
//
// acl4 and acl6 hold every listener's allow list. Listeners with the ACL
// drop flag drop other sources here; the others are steered whatever their
// source, and userspace answers REFUSED where it must (a listener with the
// answers flag and an allow list is answered from the map only for allowed
// sources). An empty allow list allows everyone, so it sets neither flag.
//
// # Reuseport steering
//
// reuseport_steer (reuseport.c, SteerReuseport) is not an XDP program: an
// sk_reuseport program on the SO_REUSEPORT group of a Do53 address that
// gives each datagram to one of the attaching process's sockets (a
// REUSEPORT_SOCKARRAY, indexed by the flow hash), so that an older xdoh's
// sockets in the group receive nothing while it drains during an
// overlapping restart.
//
// # Regenerating
//
// The *_bpfel.go and *_bpfel.o files are generated and committed, so
// building needs no clang. After changing a .c file run `make generate` (go generate ./bpf/...),
// which needs clang, llvm-strip and libbpf's headers (Debian: clang llvm
// libbpf-dev). The output is reproducible: the same clang gives the same
// bytes. The C structs and enum reason reach Go through bpf2go's -type: the
// Go side follows a layout change, or fails to compile.
package bpf

// The -idirafter paths find asm/types.h on Debian's multiarch layout (amd64,
// arm64); elsewhere they do not exist and are ignored.
//go:generate go tool bpf2go -cc clang -target bpfel -type reason -type listener_key -type listener_value -type acl4_key -type acl6_key -type answer_event -type answer_key -type answer xdp xdp.c -- -Wall -Werror -mcpu=v3 -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu

// bench.c is `xdoh bench --xdp`'s own program (LoadBench, bench.go): the
// server's program steers by destination, the load generator needs the
// replies from its target.
//go:generate go tool bpf2go -cc clang -target bpfel bench bench.c -- -Wall -Werror -mcpu=v3 -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu

// reuseport.c steers a SO_REUSEPORT group of UDP sockets to the newest
// xdoh's (SteerReuseport, reuseport.go), for restarts that lose nothing.
//go:generate go tool bpf2go -cc clang -target bpfel reuseport reuseport.c -- -Wall -Werror -mcpu=v3 -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu
