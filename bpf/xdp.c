//go:build ignore

// xdp_dns steers DNS queries for xdoh's listeners into AF_XDP sockets and
// hands everything else to the kernel untouched. See doc.go for the maps and
// for why each check is here; keep the two in step.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

// reason is the counters index: every packet increments exactly one. The Go
// side names them (Reason.String); the order is ABI.
enum reason {
	REASON_REDIRECT,          // steered into the queue's AF_XDP socket
	REASON_PASS_NO_SOCKET,    // a listener's packet, but no socket on this queue
	REASON_PASS_NOT_IP,       // not IPv4/IPv6 (ARP, LLDP, 3+ VLAN tags, ...)
	REASON_PASS_NOT_UDP,      // TCP, ICMP, ...
	REASON_PASS_FRAGMENT,     // IPv4 MF set or fragment offset != 0
	REASON_PASS_IP_OPTIONS,   // IPv4 IHL != 5
	REASON_PASS_IPV6_EXT,     // IPv6 next header is an extension header
	REASON_PASS_BAD_LENGTH,   // truncated header, or lengths that disagree with the frame
	REASON_PASS_BAD_CHECKSUM, // IPv4 header checksum
	REASON_PASS_SHORT_DNS,    // UDP payload shorter than a DNS header
	REASON_PASS_NOT_LISTENER, // no listener on the destination address and port
	REASON_DROP_ACL,          // source not in the listener's allow list (LISTENER_ACL_DROP)
	REASON_TX,                // answered from the answers map (XDP_TX)
	REASON_DROP_TORN,         // the answers entry was rewritten while copied: dropped, the client retries
	REASON_MAX,
};

// answer_event is the answer_counters index: what the in-kernel tier did
// with a packet of a listener that has it (LISTENER_ANSWERS). Every such
// packet the ACL lets through increments exactly one.
enum answer_event {
	ANSWER_HIT,            // answered with XDP_TX
	ANSWER_MISS_ABSENT,    // no entry for the question
	ANSWER_MISS_EXPIRED,   // an entry past its expiry
	ANSWER_MISS_TOO_LARGE, // the entry is larger than the client's UDP size
	ANSWER_MISS_NOT_EXACT, // a query the tier does not answer (see doc.go)
	ANSWER_MISS_NO_ROOM,   // the frame could not grow to the answer's size
	ANSWER_TORN,           // the entry changed under the copy: the half-built reply is dropped
	ANSWER_EVENT_MAX,
};

// Listener flags.
#define LISTENER_ACL_DROP 1 // drop sources the listener's acl4/acl6 entries do not cover
#define LISTENER_ACL 2      // the listener has an allow list (acl4/acl6 entries)
#define LISTENER_ANSWERS 4  // answer from the answers map

#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

// listener_key is a listener's address: addr is the 16-byte form of the
// destination (IPv4 as ::ffff:a.b.c.d), zero (::ffff:0.0.0.0 for IPv4) for a
// wildcard listener.
struct listener_key {
	__be16 port;   // network byte order
	__u8 family;   // FAMILY_IPV4 or FAMILY_IPV6
	__u8 pad;      // zero
	__u8 addr[16];
};

struct listener_value {
	__u32 id;    // keys the listener's ACL entries
	__u32 flags; // LISTENER_*
};

// acl4_key and acl6_key are LPM trie keys: prefixlen counts the 32 bits of
// the big-endian listener id, so it is 32 + the prefix length of addr.
struct acl4_key {
	__u32 prefixlen;
	__be32 id;
	__u8 addr[4];
};

struct acl6_key {
	__u32 prefixlen;
	__be32 id;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct listener_key);
	__type(value, struct listener_value);
	__uint(max_entries, 1024);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct acl4_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
} acl4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct acl6_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
} acl6 SEC(".maps");

// xsks maps an rx queue to its AF_XDP socket. Load sets max_entries.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, REASON_MAX);
} counters SEC(".maps");

// queue_cpus counts, per rx queue and per CPU, the packets redirected to
// the queue's socket: which CPU's softirq fills that socket's RX ring
// (userspace binds the queue's loop to it). Load sets max_entries.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} queue_cpus SEC(".maps");

#define ANSWER_NAME_MAX 128 // wire names longer than this are not answered here
#define ANSWER_MAX 1232     // the largest response an answers entry holds

// Key flag bits: dnsmsg.AppendKey's, which the userspace cache keys on.
#define KEY_OPT 1 // the query has an OPT record
#define KEY_DO 2  // DNSSEC OK
#define KEY_CD 4  // checking disabled
#define KEY_RD 8  // recursion desired

// answer_key is what the userspace cache keys a response on, with the name
// hashed (name_hash): a short key hashes and compares fast. The entry holds
// the name itself, compared after the lookup.
struct answer_key {
	__u64 hash;    // name_hash of the lower-cased wire name
	__be16 qtype;  // network order
	__be16 qclass; // network order
	__u8 flags;    // KEY_*
	__u8 name_len; // of the name, the root label included
	__u16 pad;     // zero
};

// answer is a response ready to go, with the query's ID and question name
// still to be copied in.
// A map update may reuse the memory of an entry the program is reading
// (preallocated maps recycle elements at once), so every write carries a
// new gen at both ends, and a reply is sent only if both still read the
// gen seen first once it is copied.
struct answer {
	__u64 gen;     // userspace's write number; the same as gen_end
	__u64 expires; // bpf_ktime_get_coarse_ns() from which it no longer answers
	__u32 slot;    // its answer_hits index
	__u32 csum;    // 16-bit one's complement sum of the response, ID and question name left out (see doc.go)
	__u16 len;     // of data
	__u16 pad[3];
	__u8 name[ANSWER_NAME_MAX]; // the key's name: lower-cased wire form, zero after it
	__u8 data[ANSWER_MAX];      // the response
	__u64 gen_end;
};

// answers is filled by userspace; Load sets max_entries.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct answer_key);
	__type(value, struct answer);
	__uint(max_entries, 4096);
} answers SEC(".maps");

// answer_hits counts XDP_TX answers per answers slot; Load sets max_entries.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4096);
} answer_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, ANSWER_EVENT_MAX);
} answer_counters SEC(".maps");

// name_scratch holds a query's lower-cased name for the comparison with the
// entry's (too big for the stack next to the rest).
struct name_scratch {
	__u8 name[ANSWER_NAME_MAX];
	__u32 name_len;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct name_scratch);
	__uint(max_entries, 1);
} scratch SEC(".maps");

// name_seed seeds name_hash; Load sets it (bpf.nameSeed).
volatile const __u64 name_seed = 0;

// name_hash's multiplier (2^64 / golden ratio).
#define NAME_MUL 0x9e3779b97f4a7c15ULL

// answers_on is set at load time (Options.Answers): with 0 the verifier
// never walks the answer tier, so a kernel that cannot verify it still
// loads the rest.
volatile const __u32 answers_on = 0;

// Puts enum reason into the BTF so that bpf2go generates its constants. Never
// read; Load does not create its .bss.
const enum reason *unused_reason __attribute__((unused));
const enum answer_event *unused_answer_event __attribute__((unused));

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

// query is what parse found in a packet it accepts.
struct query {
	struct listener_key dst; // lookup key for the destination
	__u8 saddr[16];          // source: IPv4 in the first 4 bytes
	__u16 l3_off;            // offset of the IP header from ctx->data
	__u16 dns_off;           // offset of the DNS message from ctx->data
	__u16 dns_len;           // its length (>= 12)
};

// bump adds one to entry key of a per-CPU u64 array (no other writer).
static __always_inline void bump(void *map, __u32 key)
{
	__u64 *n = bpf_map_lookup_elem(map, &key);

	if (n)
		*n += 1;
}

static __always_inline int count(enum reason r, int verdict)
{
	bump(&counters, r);
	return verdict;
}

// ipv4_csum_ok checks the checksum of a 20-byte IPv4 header: the one's
// complement sum over the header, checksum included, is all ones.
static __always_inline int ipv4_csum_ok(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

// ipv6_ext says whether nexthdr is an IPv6 extension header (IANA's list).
static __always_inline int ipv6_ext(__u8 nexthdr)
{
	switch (nexthdr) {
	case 0:   // hop-by-hop options
	case 43:  // routing
	case 44:  // fragment
	case 50:  // ESP
	case 51:  // AH
	case 60:  // destination options
	case 135: // mobility
	case 139: // HIP
	case 140: // shim6
	case 253: // experimental
	case 254:
		return 1;
	}
	return 0;
}

// parse_udp checks the UDP header at udp against the IP payload length plen
// (which lies inside the frame) and fills the DNS fields of q.
static __always_inline int parse_udp(struct xdp_md *ctx, struct udphdr *udp, __u32 plen, struct query *q)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if ((void *)(udp + 1) > end || plen < sizeof(*udp))
		return REASON_PASS_BAD_LENGTH;
	if (bpf_ntohs(udp->len) != plen)
		return REASON_PASS_BAD_LENGTH;
	if (plen - sizeof(*udp) < 12)
		return REASON_PASS_SHORT_DNS;
	q->dst.port = udp->dest;
	q->dns_off = (void *)(udp + 1) - data;
	q->dns_len = plen - sizeof(*udp);
	return REASON_MAX;
}

static __always_inline int parse_ipv4(struct xdp_md *ctx, struct iphdr *ip, struct query *q)
{
	void *end = (void *)(long)ctx->data_end;
	__u32 tot;

	if ((void *)(ip + 1) > end)
		return REASON_PASS_BAD_LENGTH;
	if (ip->version != 4)
		return REASON_PASS_NOT_IP;
	if (ip->ihl < 5)
		return REASON_PASS_BAD_LENGTH;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < ip->ihl * 4 || (void *)ip + tot > end) // padding after tot is fine
		return REASON_PASS_BAD_LENGTH;
	if (ip->protocol != IPPROTO_UDP)
		return REASON_PASS_NOT_UDP;
	if (ip->frag_off & bpf_htons(0x3fff)) // MF or an offset
		return REASON_PASS_FRAGMENT;
	if (ip->ihl != 5)
		return REASON_PASS_IP_OPTIONS;
	if (!ipv4_csum_ok(ip))
		return REASON_PASS_BAD_CHECKSUM;

	q->dst.family = FAMILY_IPV4;
	q->dst.addr[10] = 0xff;
	q->dst.addr[11] = 0xff;
	__builtin_memcpy(&q->dst.addr[12], &ip->daddr, 4);
	__builtin_memcpy(q->saddr, &ip->saddr, 4);
	return parse_udp(ctx, (struct udphdr *)(ip + 1), tot - sizeof(*ip), q);
}

static __always_inline int parse_ipv6(struct xdp_md *ctx, struct ipv6hdr *ip6, struct query *q)
{
	void *end = (void *)(long)ctx->data_end;
	__u32 plen;

	if ((void *)(ip6 + 1) > end)
		return REASON_PASS_BAD_LENGTH;
	if (ip6->version != 6)
		return REASON_PASS_NOT_IP;
	plen = bpf_ntohs(ip6->payload_len);
	if (plen == 0 || (void *)(ip6 + 1) + plen > end) // 0: jumbogram
		return REASON_PASS_BAD_LENGTH;
	if (ip6->nexthdr != IPPROTO_UDP)
		return ipv6_ext(ip6->nexthdr) ? REASON_PASS_IPV6_EXT : REASON_PASS_NOT_UDP;

	q->dst.family = FAMILY_IPV6;
	__builtin_memcpy(q->dst.addr, &ip6->daddr, 16);
	__builtin_memcpy(q->saddr, &ip6->saddr, 16);
	return parse_udp(ctx, (struct udphdr *)(ip6 + 1), plen, q);
}

// parse returns REASON_MAX for a DNS-sized UDP datagram it filled q from, or
// the reason to pass the packet to the kernel.
static __always_inline int parse(struct xdp_md *ctx, struct query *q)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *pos = eth + 1;
	__be16 proto;

	if (pos > end)
		return REASON_PASS_BAD_LENGTH;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < 2; i++) { // 802.1Q, 802.1ad (QinQ)
		struct vlan_hdr *vh = pos;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > end)
			return REASON_PASS_BAD_LENGTH;
		proto = vh->proto;
		pos = vh + 1;
	}

	q->l3_off = pos - data;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(ctx, pos, q);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(ctx, pos, q);
	return REASON_PASS_NOT_IP;
}

// find_listener looks up the exact destination, then the family's wildcard.
// q->dst keeps the destination.
static __always_inline struct listener_value *find_listener(struct query *q)
{
	struct listener_value *lv = bpf_map_lookup_elem(&listeners, &q->dst);
	struct listener_key any = {.port = q->dst.port, .family = q->dst.family};

	if (lv)
		return lv;
	if (q->dst.family == FAMILY_IPV4) {
		any.addr[10] = 0xff;
		any.addr[11] = 0xff;
	}
	return bpf_map_lookup_elem(&listeners, &any);
}

// acl_allows says whether the listener's allow list covers the source.
static __always_inline int acl_allows(const struct query *q, __u32 id)
{
	if (q->dst.family == FAMILY_IPV4) {
		struct acl4_key k = {.prefixlen = 32 + 32, .id = bpf_htonl(id)};

		__builtin_memcpy(k.addr, q->saddr, 4);
		return bpf_map_lookup_elem(&acl4, &k) != NULL;
	}
	struct acl6_key k = {.prefixlen = 32 + 128, .id = bpf_htonl(id)};

	__builtin_memcpy(k.addr, q->saddr, 16);
	return bpf_map_lookup_elem(&acl6, &k) != NULL;
}

// barrier_var hides what the compiler knows of v, so that a check on it
// stays where the verifier needs it (libbpf's bpf_helpers.h has it from 1.1).
#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif
#ifndef barrier_var
#define barrier_var(v) asm volatile("" : "+r"(v))
#endif

// fold folds a 32-bit one's complement sum into 16 bits.
static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

// sum16 adds n (even) bytes at p as 16-bit words in memory order.
#define SUM16(p, n)                                                        \
	({                                                                 \
		__u32 _s = 0;                                              \
		_Pragma("unroll") for (int _i = 0; _i < (n) / 2; _i++) _s += \
			((const __u16 *)(p))[_i];                          \
		_s;                                                        \
	})

// v6_special says whether an IPv6 address is no host's on the wire.
static __always_inline int v6_special(const __u8 *a)
{
	__u64 hi, lo;

	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&lo, a + 8, 8);
	if (hi != 0)
		return 0;
	// ::, ::1, ::ffff:0:0/96 (IPv4-mapped)
	return lo == 0 || lo == bpf_cpu_to_be64(1) || (a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff);
}

// unicast says whether the frame is between two hosts: no multicast or
// broadcast MAC or IP address (a spoofed source would make the answer a
// flood), no address that is nobody's on the wire.
static __always_inline int unicast(struct xdp_md *ctx, const struct query *q)
{
	const struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return 0;
	if ((eth->h_source[0] & 1) || (eth->h_dest[0] & 1))
		return 0;
	if (q->dst.family == FAMILY_IPV4) {
		__u8 s = q->saddr[0], d = q->dst.addr[12];

		// 0/8 and 127/8 (nobody's address on the wire), 224/4
		// (multicast) and 240/4 (reserved, broadcast), either way
		return s != 0 && s != 127 && s < 224 && d != 0 && d != 127 && d < 224;
	}
	// multicast, unspecified, loopback or IPv4-mapped, either way
	return q->saddr[0] != 0xff && q->dst.addr[0] != 0xff && !v6_special(q->saddr) && !v6_special(q->dst.addr);
}

// lower8 lower-cases the ASCII letters of eight bytes at once.
static __always_inline __u64 lower8(__u64 x)
{
	__u64 h = x & 0x7f7f7f7f7f7f7f7fULL;
	__u64 ge_a = h + 0x3f3f3f3f3f3f3f3fULL; // bit 7 set where h >= 'A'
	__u64 gt_z = h + 0x2525252525252525ULL; // bit 7 set where h > 'Z'
	__u64 upper = (ge_a ^ gt_z) & ~x & 0x8080808080808080ULL;

	return x | (upper >> 2);
}

// answer answers the query q from the answers map with XDP_TX, or leaves
// the frame as it was and says why not. Only queries whose answer is
// exactly the userspace cache's are answered: one question with an
// uncompressed name of at most ANSWER_NAME_MAX bytes, no records but an
// empty EDNS version 0 OPT, nothing after it.
static __always_inline enum answer_event answer(struct xdp_md *ctx, struct query *q)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 off = q->dns_off, dns_len = q->dns_len, l3 = q->l3_off;
	__u32 zero = 0, name_len, qsum = 0, maxsize = 512;
	struct answer_key key = {};
	struct name_scratch *k;
	struct answer *a;
	__u64 h = name_seed;
	__u8 *dns;

	if (off < 42 || off > 128 || l3 > 64 || !unicast(ctx, q)) // 42: Ethernet, IPv4, UDP
		return ANSWER_MISS_NOT_EXACT;
	dns = data + off;
	if ((void *)(dns + 12) > end)
		return ANSWER_MISS_NOT_EXACT;
	// What the AF_XDP path drops as malformed is not answered here
	// either: UDP source port 0, the IPv4 reserved flag.
	struct udphdr *uq = data + (off - 8);

	if ((void *)(uq + 1) > end || uq->source == 0)
		return ANSWER_MISS_NOT_EXACT;
	if (q->dst.family == FAMILY_IPV4) {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > end || (ip->frag_off & bpf_htons(0x8000)))
			return ANSWER_MISS_NOT_EXACT;
	}
	// QR 0, opcode QUERY, TC 0; QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT <= 1
	if ((dns[2] & 0xfa) != 0 || dns[4] != 0 || dns[5] != 1 || dns[6] | dns[7] | dns[8] | dns[9] | dns[10] ||
	    dns[11] > 1)
		return ANSWER_MISS_NOT_EXACT;
	k = bpf_map_lookup_elem(&scratch, &zero);
	if (!k)
		return ANSWER_MISS_NOT_EXACT;

	// The name's labels: its length, no pointers. pos is where the next
	// label starts.
	__u32 pos = 0;
	int found = 0;

	for (int n = 0; n < ANSWER_NAME_MAX / 2; n++) {
		__u8 *p = dns + 12 + pos;

		if ((void *)(p + 1) > end)
			return ANSWER_MISS_NOT_EXACT;
		if (*p == 0) {
			found = 1;
			break;
		}
		if (*p > 63)
			return ANSWER_MISS_NOT_EXACT; // a pointer or a bad length
		pos += *p + 1;
		if (pos >= ANSWER_NAME_MAX)
			return ANSWER_MISS_NOT_EXACT;
	}
	if (!found)
		return ANSWER_MISS_NOT_EXACT;
	// Read back from the map value: the verifier then knows only its
	// bounds, whichever iteration found it, and checks what follows once.
	k->name_len = pos + 1;
	name_len = *(volatile __u32 *)&k->name_len;
	if (name_len == 0 || name_len > ANSWER_NAME_MAX)
		return ANSWER_MISS_NOT_EXACT;

	// The name, lower-cased, eight bytes at a time into the scratch and
	// the hash; qsum adds the client's bytes for the UDP checksum.
	for (__u32 c8 = 0; c8 < ANSWER_NAME_MAX / 8; c8++) {
		__u32 at = c8 * 8, rem;
		__u8 *p = dns + 12 + at;
		__u64 x;

		if (at >= name_len)
			break;
		rem = name_len - at;
		// The question's type and class follow the name: a chunk that
		// holds at most 4 bytes of it can be read as 4 bytes.
		if (rem > 4) {
			if ((void *)(p + 8) > end)
				return ANSWER_MISS_NOT_EXACT;
			x = *(__u64 *)p;
		} else {
			if ((void *)(p + 4) > end)
				return ANSWER_MISS_NOT_EXACT;
			x = *(__u32 *)p;
		}
		if (rem < 8)
			x &= (1ULL << (rem * 8)) - 1;
		qsum += (x & 0xffff) + ((x >> 16) & 0xffff) + ((x >> 32) & 0xffff) + (x >> 48);
		x = lower8(x);
		*(__u64 *)&k->name[at & (ANSWER_NAME_MAX - 8)] = x;
		h = (h ^ x) * NAME_MUL;
	}
	name_len = *(volatile __u32 *)&k->name_len;
	if (name_len == 0 || name_len > ANSWER_NAME_MAX)
		return ANSWER_MISS_NOT_EXACT;
	key.hash = h ^ (h >> 32);
	key.name_len = name_len;

	__u32 qend = 12 + name_len + 4;
	__u8 *p = dns + 12 + name_len;

	if ((void *)(p + 4) > end)
		return ANSWER_MISS_NOT_EXACT;
	key.qtype = *(__be16 *)p;
	key.qclass = *(__be16 *)(p + 2);
	if (dns[2] & 1)
		key.flags |= KEY_RD;
	if (dns[3] & 0x10)
		key.flags |= KEY_CD;
	if (dns[11] == 0) {
		if (dns_len != qend)
			return ANSWER_MISS_NOT_EXACT;
	} else {
		__u8 *o = p + 4;
		__u32 size;

		// root name, TYPE OPT, CLASS = UDP size, extended RCODE,
		// version 0, flags, RDLENGTH 0
		if ((void *)(o + 11) > end || dns_len != qend + 11)
			return ANSWER_MISS_NOT_EXACT;
		if (o[0] != 0 || o[1] != 0 || o[2] != 41 || o[6] != 0 || o[9] != 0 || o[10] != 0)
			return ANSWER_MISS_NOT_EXACT;
		key.flags |= KEY_OPT;
		if (o[7] & 0x80)
			key.flags |= KEY_DO;
		size = (__u32)o[3] << 8 | o[4];
		if (size > 4096)
			size = 4096;
		if (size > maxsize)
			maxsize = size;
	}

	a = bpf_map_lookup_elem(&answers, &key);
	if (!a)
		return ANSWER_MISS_ABSENT;
	__u64 gen = *(volatile __u64 *)&a->gen;

	barrier();
	for (__u32 c8 = 0; c8 < ANSWER_NAME_MAX / 8; c8++) {
		__u32 at = (c8 * 8) & (ANSWER_NAME_MAX - 8);

		if (c8 * 8 >= name_len)
			break;
		if (*(__u64 *)&k->name[at] != *(__u64 *)&a->name[at])
			return ANSWER_MISS_ABSENT; // another name with the same hash
	}
	name_len = *(volatile __u32 *)&k->name_len;
	if (name_len == 0 || name_len > ANSWER_NAME_MAX)
		return ANSWER_MISS_NOT_EXACT;
	if (bpf_ktime_get_coarse_ns() >= a->expires)
		return ANSWER_MISS_EXPIRED;
	__u32 len = a->len;
	if (len > maxsize)
		return ANSWER_MISS_TOO_LARGE;
	if (len > ANSWER_MAX || len < qend)
		return ANSWER_MISS_NOT_EXACT; // a bad entry: never from userspace
	__u32 slot = a->slot;
	__u32 csum = a->csum;
	__u16 id = *(__u16 *)dns;

	// The frame becomes the reply: its headers, then the response. The
	// query's ID and question name stay where they are.
	if (bpf_xdp_adjust_tail(ctx, (int)(off + len) - (int)(end - data)))
		return ANSWER_MISS_NO_ROOM;
	// From here the frame is the reply's: the checks below are for the
	// verifier and cannot fail.
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	dns = data + off;
	if ((void *)(dns + 12) > end)
		return ANSWER_MISS_NO_ROOM;
	__builtin_memcpy(dns + 2, a->data + 2, 10); // the header after the ID

	__u32 j = 12 + name_len;

	for (int n = 0; n < ANSWER_MAX / 8; n++) { // eight bytes at a time
		if (j + 8 > len)
			break;
		barrier_var(j); // keep the bounds check below as written, for the verifier
		if ((void *)(dns + j + 8) > end || j >= ANSWER_MAX)
			return ANSWER_MISS_NO_ROOM;
		*(__u64 *)(dns + j) = *(__u64 *)(a->data + j);
		j += 8;
	}
	for (int n = 0; n < 7; n++) { // the rest
		if (j >= len)
			break;
		barrier_var(j);
		if ((void *)(dns + j + 1) > end || j >= ANSWER_MAX)
			return ANSWER_MISS_NO_ROOM;
		dns[j] = a->data[j];
		j++;
	}

	barrier();
	if (*(volatile __u64 *)&a->gen_end != gen || *(volatile __u64 *)&a->gen != gen)
		return ANSWER_TORN;

	// Ethernet, IP and UDP headers of the reply.
	struct ethhdr *eth = data;
	__u8 mac[ETH_ALEN];
	__u32 udp_len = 8 + len;
	__u32 sum = csum + id + qsum;
	struct udphdr *udp = data + (off - 8);

	if ((void *)(eth + 1) > end)
		return ANSWER_MISS_NO_ROOM;
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);

	if (q->dst.family == FAMILY_IPV4) {
		struct iphdr *ip = data + l3;
		__be32 addr;

		if ((void *)(ip + 1) > end)
			return ANSWER_MISS_NO_ROOM;
		addr = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = addr;
		ip->tos &= ~0x03; // ECN
		ip->tot_len = bpf_htons(sizeof(*ip) + udp_len);
		ip->ttl = 64;
		ip->check = 0;
		ip->check = ~fold(SUM16(ip, sizeof(*ip)));
		sum += SUM16(&ip->saddr, 8);
	} else {
		struct ipv6hdr *ip6 = data + l3;
		struct in6_addr addr;

		if ((void *)(ip6 + 1) > end)
			return ANSWER_MISS_NO_ROOM;
		addr = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = addr;
		ip6->flow_lbl[0] &= ~0x30; // ECN: the low bits of the traffic class
		ip6->payload_len = bpf_htons(udp_len);
		ip6->hop_limit = 64;
		sum += SUM16(&ip6->saddr, 32);
	}
	if ((void *)(udp + 1) > end)
		return ANSWER_MISS_NO_ROOM;
	__be16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(udp_len);
	udp->check = 0;
	// The pseudo-header's protocol and length, then the UDP header.
	sum += bpf_htons(IPPROTO_UDP) + udp->len + udp->source + udp->dest + udp->len;
	__u16 c = ~fold(sum);
	udp->check = c ? c : 0xffff;

	bump(&answer_hits, slot);
	return ANSWER_HIT;
}

SEC("xdp")
int xdp_dns(struct xdp_md *ctx)
{
	struct query q = {};
	struct listener_value *lv;
	long verdict;
	int r;

	r = parse(ctx, &q);
	if (r != REASON_MAX)
		return count(r, XDP_PASS);

	lv = find_listener(&q);
	if (!lv)
		return count(REASON_PASS_NOT_LISTENER, XDP_PASS);
	if (lv->flags & LISTENER_ACL_DROP) {
		if (!acl_allows(&q, lv->id))
			return count(REASON_DROP_ACL, XDP_DROP);
	} else if ((lv->flags & (LISTENER_ACL | LISTENER_ANSWERS)) == (LISTENER_ACL | LISTENER_ANSWERS) &&
		   !acl_allows(&q, lv->id)) {
		goto redirect; // userspace answers REFUSED
	}
	if (answers_on && (lv->flags & LISTENER_ANSWERS)) {
		r = answer(ctx, &q);
		bump(&answer_counters, r);
		if (r == ANSWER_HIT)
			return count(REASON_TX, XDP_TX);
		if (r == ANSWER_TORN)
			return count(REASON_DROP_TORN, XDP_DROP);
	}

redirect:
	// With XDP_PASS as the flags' fallback, a queue without a socket
	// (or one past max_entries) reaches the kernel.
	verdict = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (verdict == XDP_REDIRECT) {
		bump(&queue_cpus, ctx->rx_queue_index);
		return count(REASON_REDIRECT, XDP_REDIRECT);
	}
	return count(REASON_PASS_NO_SOCKET, XDP_PASS);
}
