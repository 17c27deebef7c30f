#!/usr/bin/env bash
# bench/latency.sh - latency distributions of dnsperf and xdoh bench side by
# side (issue 18), with equal settings, against one xdoh serving a local
# zone (aws.example.internal, 1000 A records) on loopback: UDP, TCP and DoH
# POST at a fixed rate that saturates neither (RATE, default 20000 q/s, for
# DURATION seconds, default 5; CLIENTS sockets or connections, default 4).
#
#   make bench-latency                 # or: XDOH_BIN=bin/xdoh bash bench/latency.sh
#   RATE=5000 DURATION=3 TRANSPORTS="udp doh" bash bench/latency.sh
#
# dnsperf's latencies come from `dnsperf -v`, which prints every answer
# with its latency (6 decimal places of a second); this script takes
# p50/p90/p99/p99.9/max of them (nearest rank). xdoh bench's come from
# its --json (HDR histogram, 3 significant digits).
#
# What each measures: dnsperf -Q caps its send rate but stays a closed
# loop at heart (at most -q queries outstanding, here 1000), and times a
# query from when it actually sent it. xdoh bench -Q is an open
# loop and times a query from its scheduled send time, so the rig's own
# lateness (a busy CPU) counts against the server instead of being hidden
# (no coordinated omission). On a quiet box the two agree; where they
# differ, xdoh bench's tail includes scheduling delay that dnsperf's omits.
#
# Loopback only, free ports picked at start. xdoh is stopped by its
# process group at exit; every run is bounded by DURATION (dnsperf -l and
# xdoh bench -l).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${XDOH_BIN:-$root/bin/xdoh}
RATE=${RATE:-20000}
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-4}
TRANSPORTS=${TRANSPORTS:-"udp tcp doh"}
[ -x "$BIN" ] || { echo "no $BIN: make build (or set XDOH_BIN)" >&2; exit 1; }
for t in dnsperf openssl python3 dig; do
  command -v "$t" >/dev/null || { echo "$t is not installed" >&2; exit 1; }
done

w=$(mktemp -d /tmp/xdoh-latency.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill -TERM -- -"$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- -"$pid" 2>/dev/null || true
  fi
  rm -rf "$w"
}
trap cleanup EXIT

# Two loopback ports free for UDP and TCP alike.
read -r DO53 DOH < <(python3 - <<'PY'
import socket
ports = []
while len(ports) < 2:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); ports.append(p)
    except OSError:
        pass
    u.close(); t.close()
print(*ports)
PY
)

# Private CA and server certificate for 127.0.0.1 and localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$w/ca.key" \
  -out "$w/ca.pem" -days 2 -subj "/CN=xdoh latency CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$w/server.key" \
  -out "$w/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$w/server.ext"
openssl x509 -req -in "$w/server.csr" -CA "$w/ca.pem" -CAkey "$w/ca.key" -CAcreateserial \
  -out "$w/server.pem" -days 2 -extfile "$w/server.ext" 2>/dev/null
cat "$w/server.pem" "$w/ca.pem" >"$w/server-chain.pem"

{
  printf '$TTL 3600\n@ IN SOA ns hostmaster 1 3600 600 86400 3600\n  IN NS ns\nns IN A 127.0.0.1\n'
  for i in $(seq 0 999); do echo "name$i IN A 198.18.$((i / 256)).$((i % 256))"; done
} >"$w/zone"
for i in $(seq 0 999); do echo "name$i.aws.example.internal A"; done >"$w/q.txt"
cat >"$w/xdoh.yaml" <<Y
listeners:
  - name: bench
    protocols: [do53, doh]
    do53: ["127.0.0.1:$DO53"]
    doh: {address: "127.0.0.1:$DOH", path: /dns-query, cert: $w/server-chain.pem, key: $w/server.key}
zones:
  - {name: aws.example.internal, file: $w/zone}
Y
setsid "$BIN" run -c "$w/xdoh.yaml" >"$w/xdoh.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  dig +short +time=1 +tries=1 -p "$DO53" @127.0.0.1 name0.aws.example.internal A >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$w/xdoh.log" >&2; exit 1; }
  sleep 0.1
done

# dnsperf -v lines: "> NOERROR name0.aws.example.internal A 0.000123".
pcts_dnsperf() {
  python3 - "$1" <<'PY'
import math, re, sys
lat = sorted(float(m.group(1)) * 1000 for m in
             (re.match(r"> \S+ .* (\d+\.\d+)$", l.strip()) for l in open(sys.argv[1])) if m)
if not lat:
    sys.exit("no per-query latencies in dnsperf -v output")
rank = lambda p: lat[min(len(lat) - 1, max(0, math.ceil(p / 100 * len(lat)) - 1))]
qps = re.search(r"Queries per second:\s+([\d.]+)", open(sys.argv[1]).read())
print(len(lat), "%.0f" % float(qps.group(1)) if qps else "?", *("%.3f" % rank(p) for p in (50, 90, 99, 99.9)), "%.3f" % lat[-1])
PY
}
pcts_bench() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency"]
print(r["answered"], "%.0f" % r["qps"], *("%.3f" % l[k] for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")))
PY
}

echo "xdoh $BIN ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')); -Q $RATE -l $DURATION -c $CLIENTS; loopback, 1000-name local zone"
common=(-d "$w/q.txt" -c "$CLIENTS" -l "$DURATION")
for t in $TRANSPORTS; do
  case $t in
  udp) perf=(-m udp -p "$DO53"); target=127.0.0.1:$DO53; extra=() ;;
  tcp) perf=(-m tcp -p "$DO53"); target=tcp://127.0.0.1:$DO53; extra=() ;;
  doh) perf=(-m doh -p "$DOH" -O doh-uri=https://localhost:$DOH/dns-query -O doh-method=POST)
       target=https://127.0.0.1:$DOH/dns-query; extra=(--ca-file "$w/ca.pem") ;;
  *) echo "unknown transport $t (want udp, tcp, doh)" >&2; exit 2 ;;
  esac
  # -q bounds dnsperf's queries outstanding; 1000 is far above what RATE
  # keeps in flight at sub-millisecond latency, so -Q alone paces it.
  dnsperf -s 127.0.0.1 "${perf[@]}" "${common[@]}" -q 1000 -Q "$RATE" -v >"$w/dnsperf-$t.out" 2>&1 ||
    { tail -5 "$w/dnsperf-$t.out" >&2; exit 1; }
  "$BIN" bench "${common[@]}" -Q "$RATE" "${extra[@]}" --json "$w/bench-$t.json" "$target" >"$w/bench-$t.out" 2>&1 ||
    { tail -5 "$w/bench-$t.out" >&2; exit 1; }
  read -r dn dq d50 d90 d99 d999 dmax < <(pcts_dnsperf "$w/dnsperf-$t.out")
  read -r xn xq x50 x90 x99 x999 xmax < <(pcts_bench "$w/bench-$t.json")
  echo
  printf '%-10s | %9s | %10s\n' "$t (ms)" dnsperf "xdoh bench"
  echo "-----------|----------:|-----------:"
  printf '%-10s | %9s | %10s\n' answered "$dn" "$xn" "q/s" "$dq" "$xq" p50 "$d50" "$x50" p90 "$d90" "$x90" \
    p99 "$d99" "$x99" p99.9 "$d999" "$x999" max "$dmax" "$xmax"
done
