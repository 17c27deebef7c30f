#!/usr/bin/env bash
# xdp-gun.sh - `xdoh bench --xdp` against kxdpgun, back to back, on the same
# target over a veth pair between two network namespaces made here (names
# unique to this run; link-local IPv4 / ULA IPv6; deleted on exit).
#
#   bash bench/xdp-gun.sh                 # Knot DNS 3.2 in XDP mode, 3 runs each of 5 s
#   TARGET=knot-sock RUNS=3 DURATION=5 XDOH_BIN=bin/xdoh bash bench/xdp-gun.sh
#
# Query set: ipv4.aws.example.internal A (a local zone). kxdpgun: -Q GUN_QPS
# (it sends what it can); xdoh bench --xdp: closed loop with -q OUTSTANDING.
# Columns: sent/s and answered/s over the run's length (-l), as kxdpgun counts them.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XDOH_BIN=${XDOH_BIN:-$HERE/../bin/xdoh}
TARGET=${TARGET:-knot-xdp}
RUNS=${RUNS:-3}; DURATION=${DURATION:-5}
GUN_QPS=${GUN_QPS:-4000000}; OUTSTANDING=${OUTSTANDING:-2048}
QUEUES=${QUEUES:-2}
ZONE=$HERE/../cmd/xdoh/demo/aws.example.internal.zone
for t in knotd kxdpgun ip; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
W=$(mktemp -d /tmp/xdp-gun.XXXXXX)
C=xgc$$ S=xgs$$ CI=xgc$$i SI=xgs$$i
C4=169.254.54.1 S4=169.254.54.2
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM -- -"$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL -- -"$p" 2>/dev/null; done
  ip netns del $C 2>/dev/null; ip netns del $S 2>/dev/null
}
trap cleanup EXIT
ip netns add $C; ip netns add $S
ip link add $CI numtxqueues $QUEUES numrxqueues $QUEUES type veth peer name $SI numtxqueues $QUEUES numrxqueues $QUEUES
ip link set $CI netns $C; ip link set $SI netns $S
ip -n $C addr add $C4/24 dev $CI; ip -n $S addr add $S4/24 dev $SI
ip -n $C -6 addr add fd54::1/64 dev $CI nodad; ip -n $S -6 addr add fd54::2/64 dev $SI nodad
for n in $C $S; do ip -n $n link set lo up; done
ip -n $C link set $CI up; ip -n $S link set $SI up
mc=$(ip -n $C -o link show $CI | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
ms=$(ip -n $S -o link show $SI | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
ip -n $C neigh replace $S4 lladdr "$ms" dev $CI nud permanent
ip -n $S neigh replace $C4 lladdr "$mc" dev $SI nud permanent
ip -n $C -6 neigh replace fd54::2 lladdr "$ms" dev $CI nud permanent
ip -n $S -6 neigh replace fd54::1 lladdr "$mc" dev $SI nud permanent

cp "$ZONE" "$W/"
{ echo "server:"; echo "    rundir: $W"; echo "    user: root"
  echo "    listen: $S4@53"; echo "    listen: fd54::2@53"
  echo "    udp-workers: 2"; echo "    tcp-workers: 1"; echo "    background-workers: 1"
  echo "database:"; echo "    storage: $W"
  echo "template:"; echo "  - id: default"; echo "    storage: $W"
  echo "zone:"; echo "  - domain: aws.example.internal"; echo "    file: aws.example.internal.zone"
  [ "$TARGET" = knot-xdp ] && printf 'xdp:\n    listen: %s@53\n    udp: on\n    tcp: off\n' $SI
} >"$W/knot.conf"
setsid ip netns exec $S knotd -c "$W/knot.conf" >"$W/knot.log" 2>&1 </dev/null & PIDS+=($!)
sleep 2
for i in $(seq 200); do echo "ipv4.aws.example.internal A"; done >"$W/q.txt"
printf '%-14s %3s %10s %10s\n' load run sent/s answered/s
for r in $(seq "$RUNS"); do
  sleep 1
  ip netns exec $C timeout $((DURATION + 10)) kxdpgun -t "$DURATION" -Q "$GUN_QPS" -i "$W/q.txt" -I $CI $S4 >"$W/gun.$r" 2>&1
  s=$(grep -o 'total queries: *[0-9]* ([0-9]* pps)' "$W/gun.$r" | grep -o '([0-9]*' | tr -d '(')
  a=$(grep -o 'total replies: *[0-9]* ([0-9]* pps)' "$W/gun.$r" | grep -o '([0-9]*' | tr -d '(')
  printf '%-14s %3d %10d %10d\n' kxdpgun "$r" "${s:-0}" "${a:-0}"
  ip -n $C link set dev $CI xdp off 2>/dev/null  # kxdpgun leaves its program attached
  sleep 1
  ip netns exec $C timeout $((DURATION + 15)) ${PERF:+perf record -g -o $W/perf.$r.data} "$XDOH_BIN" bench --allow-remote --xdp $CI -d "$W/q.txt" \
    -q "$OUTSTANDING" -l "$DURATION" -t 0.5 --json "$W/xdoh.$r.json" $S4 >"$W/xdoh.$r" 2>&1
  read -r s a < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["settings"]["limit_s"]; print(int(r["sent"]/l), int(r["answered"]/l))' "$W/xdoh.$r.json" 2>/dev/null || echo "0 0")
  printf '%-14s %3d %10d %10d\n' "xdoh-bench-xdp" "$r" "$s" "$a"
done
echo "raw outputs: $W" >&2
