//go:build ignore

// xdp_bench steers the answers to `xdoh bench --xdp` into its AF_XDP
// sockets: UDP from the target's address and port to a port of the
// generator's range. Everything else goes to the kernel untouched. The
// target and the range are set at load time (BenchOptions, bench.go).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

volatile const __u32 family = 4;        // of the target: 4 or 6
volatile const __be32 target4 = 0;      // IPv4 target, network order
volatile const __be32 target6[4];       // IPv6 target, network order
volatile const __be16 target_port = 0;  // network order
volatile const __u16 port_lo = 0;       // the generator's source ports, host order, inclusive
volatile const __u16 port_hi = 0;

// bench_xsks maps an rx queue to its AF_XDP socket. LoadBench sets max_entries.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} bench_xsks SEC(".maps");

static __always_inline int steer(struct xdp_md *ctx, struct udphdr *udp, void *end)
{
	if ((void *)(udp + 1) > end || udp->source != target_port)
		return XDP_PASS;
	__u16 port = bpf_ntohs(udp->dest);
	if (port < port_lo || port > port_hi)
		return XDP_PASS;
	return bpf_redirect_map(&bench_xsks, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int xdp_bench(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (family == 4 && eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
		    (ip->frag_off & bpf_htons(0x3fff)) != 0 ||
		    ip->saddr != target4)
			return XDP_PASS;
		return steer(ctx, (void *)(ip + 1), end);
	}
	if (family == 6 && eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP ||
		    ip6->saddr.in6_u.u6_addr32[0] != target6[0] || ip6->saddr.in6_u.u6_addr32[1] != target6[1] ||
		    ip6->saddr.in6_u.u6_addr32[2] != target6[2] || ip6->saddr.in6_u.u6_addr32[3] != target6[3])
			return XDP_PASS;
		return steer(ctx, (void *)(ip6 + 1), end);
	}
	return XDP_PASS;
}
