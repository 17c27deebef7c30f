#!/usr/bin/env bash
# bench/xdp-latency.sh - one query in flight (dnsperf -c 1 -q 1) against xdoh
# in native XDP mode with kernel_cache on (hot answers sent by the XDP
# program) and off (AF_XDP), on ../shared/bench-xdp/netns.sh's veth pair.
# Native XDP_TX frames on a veth arrive only if the peer has an XDP program:
# an XDP_PASS one (built with clang) goes on the client's end. Root; every
# process is stopped by its process group; DURATION (5) bounds each run;
# AFF (auto) is the listener's xdp.affinity.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$root/../shared}
BIN=${XDOH_BIN:-$root/bin/xdoh}
DURATION=${DURATION:-5}
[ -x "$BIN" ] || { echo "no $BIN: make build" >&2; exit 1; }
w=$(mktemp -d /tmp/xdoh-xdp-latency.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && { kill -TERM -- -"$pid" 2>/dev/null; sleep 1; kill -KILL -- -"$pid" 2>/dev/null; } || true
  bash "$SHARED/bench-xdp/netns.sh" down
  rm -rf "$w"
}
trap cleanup EXIT
cat >"$w/pass.c" <<'C'
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int pass(struct xdp_md *ctx) { return XDP_PASS; }
char _license[] SEC("license") = "GPL";
C
clang -O2 -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -c "$w/pass.c" -o "$w/pass.o"
cp "$SHARED"/bench-xdp/zones/*.zone "$w/"
for i in $(seq 200); do echo "ipv4.aws.example.internal A"; done >"$w/q.txt"
for kc in on off; do
  bash "$SHARED/bench-xdp/netns.sh" down; bash "$SHARED/bench-xdp/netns.sh" up
  ip -n xdpc link set dev xdpc0 xdpdrv obj "$w/pass.o" sec xdp
  cat >"$w/x.yaml" <<Y
listeners:
  - name: bench
    protocols: [do53]
    do53: ["169.254.53.2:53", "[fd53::2]:53"]
    xdp: {mode: native, interfaces: [xdps0], kernel_cache: $kc, affinity: ${AFF:-auto}}
zones:
  - {name: aws.example.internal, file: $w/aws.example.internal.zone}
Y
  setsid ip netns exec xdps "$BIN" run -c "$w/x.yaml" >"$w/xdoh-$kc.log" 2>&1 & pid=$!
  sleep 2
  ip netns exec xdpc dnsperf -s 169.254.53.2 -d "$w/q.txt" -c 1 -q 1 -l 2 >/dev/null 2>&1 # warm: promote
  ip netns exec xdpc dnsperf -s 169.254.53.2 -d "$w/q.txt" -c 1 -q 1 -l "$DURATION" >"$w/dnsperf-$kc.out" 2>&1
  echo "kernel_cache $kc: $(grep -E 'Queries per second|Average Latency' "$w/dnsperf-$kc.out" | tr -s ' ' | tr '\n' ' ')"
  kill -TERM -- -"$pid"; sleep 1; kill -KILL -- -"$pid" 2>/dev/null || true; pid=
done
