//go:build ignore

// reuseport_steer chooses, for every datagram to a SO_REUSEPORT group, one
// of the sockets in socks by the packet's hash: the sockets of the xdoh
// that attached it last, so that an older one's sockets in the same group
// (during an overlapping restart) get nothing more and can close without
// dropping what the kernel queued on them. A hash whose entry is empty (a
// socket closed) makes no choice, and the kernel picks by hash among all
// the group's sockets, as without a program (SteerReuseport, reuseport.go).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

volatile const __u32 nsocks = 1; // entries in socks; set at load time

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1); // nsocks; set at load time
} socks SEC(".maps");

SEC("sk_reuseport")
int reuseport_steer(struct sk_reuseport_md *md)
{
	__u32 key = md->hash % nsocks;

	bpf_sk_select_reuseport(md, &socks, &key, 0);
	return SK_PASS;
}
