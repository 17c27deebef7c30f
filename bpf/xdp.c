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
	REASON_MAX,
};

// Listener flags.
#define LISTENER_ACL_DROP 1 // drop sources the listener's acl4/acl6 entries do not cover

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

// Puts enum reason into the BTF so that bpf2go generates its constants. Never
// read; Load does not create its .bss.
const enum reason *unused_reason __attribute__((unused));

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

// query is what parse found in a packet it accepts.
struct query {
	struct listener_key dst; // lookup key for the destination
	__u8 saddr[16];          // source: IPv4 in the first 4 bytes
	__u16 dns_off;           // offset of the DNS message from ctx->data
	__u16 dns_len;           // its length (>= 12)
};

static __always_inline int count(enum reason r, int verdict)
{
	__u32 key = r;
	__u64 *n = bpf_map_lookup_elem(&counters, &key);

	if (n)
		*n += 1; // per-CPU: no other writer
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

	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(ctx, pos, q);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(ctx, pos, q);
	return REASON_PASS_NOT_IP;
}

// find_listener looks up the exact destination, then the family's wildcard.
static __always_inline struct listener_value *find_listener(struct query *q)
{
	struct listener_value *lv = bpf_map_lookup_elem(&listeners, &q->dst);

	if (lv)
		return lv;
	__builtin_memset(q->dst.addr, 0, sizeof(q->dst.addr));
	if (q->dst.family == FAMILY_IPV4) {
		q->dst.addr[10] = 0xff;
		q->dst.addr[11] = 0xff;
	}
	return bpf_map_lookup_elem(&listeners, &q->dst);
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
	if ((lv->flags & LISTENER_ACL_DROP) && !acl_allows(&q, lv->id))
		return count(REASON_DROP_ACL, XDP_DROP);

	// An in-kernel answer tier (XDP_TX from an answer map, using
	// q.dns_off and q.dns_len) belongs here: after the ACL, before the
	// redirect.

	// With XDP_PASS as the flags' fallback, a queue without a socket
	// (or one past max_entries) reaches the kernel.
	verdict = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (verdict == XDP_REDIRECT)
		return count(REASON_REDIRECT, XDP_REDIRECT);
	return count(REASON_PASS_NO_SOCKET, XDP_PASS);
}
