#!/usr/bin/env bash
# bench/xdp.sh - xdoh over XDP/AF_XDP against its own socket path and Knot DNS
# 3.2 (sockets and XDP mode), with ../shared/bench-xdp/run.sh: two network
# namespaces of the harness's own over a veth pair (link-local IPv4, ULA IPv6),
# kxdpgun (AF_XDP load) and dnsperf (kernel sockets), every run bounded by
# DURATION. The harness starts and stops every process by process group.
#
# Two harness runs. The first: xdp-echo (the setup's ceiling), knot-sock,
# knot-xdp, xdoh-xdp (this config with `xdp: {mode: $XDP_MODE, kernel_cache:
# off}` on the server veth: AF_XDP only; affinity auto: each queue's loop
# follows the CPU that fills its ring) and xdoh-tier (the same with
# kernel_cache on: hot answers from the XDP program). The second: xdoh-sock
# (the config without the xdp block) and xdoh-unbound (xdoh-xdp with
# affinity off: loops wherever Go's scheduler puts them), with the same
# loads. The harness runs
# kxdpgun before dnsperf, and kxdpgun's XDP program stays on the client veth:
# native XDP_TX on a veth needs one there for dnsperf to get the tier's
# answers.
# Knobs (env): DURATION (5), XDP_MODE (native), ONLY / LOADS / QSETS / PEERS
# (passed to run.sh), XDOH_BIN (bin/xdoh), SHARED (../shared), GOMAXPROCS.
# Output: the harness's results directory (table.txt, raw outputs, logs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$root/../shared}
BIN=${XDOH_BIN:-$root/bin/xdoh}
export XDP_MODE=${XDP_MODE:-native}
[ -x "$BIN" ] || { echo "no $BIN: make build" >&2; exit 1; }

conf=$(mktemp -d /tmp/xdoh-xdp-bench.XXXXXX)
trap 'rm -rf "$conf"' EXIT
# The config printer: run.sh calls it with LISTEN4 LISTEN6 PORT IFACE UPSTREAM
# ZONE_NAME ZONE_FILE set; XDP=on adds the xdp block.
cat >"$conf/conf.sh" <<'SH'
cat <<YAML
listeners:
  - name: bench
    protocols: [do53]
    do53: ["$LISTEN4:$PORT", "[$LISTEN6]:$PORT"]
YAML
[ "${XDP:-off}" = on ] && echo "    xdp: {mode: $XDP_MODE, interfaces: [$IFACE], kernel_cache: $KC, affinity: ${AFF:-auto}}"
cat <<YAML
zones:
  - {name: $ZONE_NAME, file: $ZONE_FILE}
rules:
  - {name: upstream, domain: example.com, type: forward, targets: ["$UPSTREAM"]}
YAML
SH
# Knot in XDP mode leaves its program on the veth when it exits (for a fast
# restart), and an interface holds one program: the xdoh-xdp target first
# takes it off the harness's own veth.
xdp_cmd="bash -c 'ip link set dev \$IFACE xdp off; exec $BIN run -c \$TARGET_CONF'"
TARGET_NAME=xdoh-xdp TARGET_CONF_CMD="XDP=on KC=off bash $conf/conf.sh" TARGET_CMD=$xdp_cmd \
TARGET2_NAME=xdoh-tier TARGET2_CONF_CMD="XDP=on KC=on bash $conf/conf.sh" TARGET2_CMD=$xdp_cmd \
  bash "$SHARED/bench-xdp/run.sh"
PEERS="target target2" TARGET_NAME=xdoh-sock TARGET_CONF_CMD="bash $conf/conf.sh" TARGET_CMD="$BIN run -c \$TARGET_CONF" \
TARGET2_NAME=xdoh-unbound TARGET2_CONF_CMD="XDP=on KC=off AFF=off bash $conf/conf.sh" TARGET2_CMD=$xdp_cmd \
  bash "$SHARED/bench-xdp/run.sh"
