#!/usr/bin/env bash
# bench/soak.sh - a bounded soak of the xdoh binary on loopback.
#
#   4 x `xdoh bench` (UDP, open loop) ─► xdoh 127.0.0.1:$XDOH_PORT
#        hits    -d hot.txt      foo.example.com + 300 bench.example names, looped: cache hits
#        misses  --random-sub bench.example              forwarded over DoH to BIND (NXDOMAIN)
#        local   -d local.txt    name0..999.aws.example.internal A: the local zone
#        nx      --random-sub nx.aws.example.internal    local NXDOMAIN
#   xdoh ─DoH─► BIND 9.18 127.0.0.1:$BIND_DOH (own named.conf, zones from ../shared/bench setup.sh)
#
# First the mix runs closed-loop for PROBE seconds, an upper bound; then
# SEARCH open-loop runs of PROBE seconds bisect below it for the maximum:
# the highest rate the mix runs clean at (at most 0.01% lost, late or
# SERVFAIL, RFC 2544's throughput, and every stream's p99 within MAX_P99 ms:
# a rate the box cannot keep up with shows as queueing long before the
# 2 s timeout calls a query lost), which a repeated trial must confirm
# (10% lower after a lossy repeat, up to CONFIRM trials). Then each stream runs open-loop at its
# share (hits 50%, misses 20%, local 20%, nx 10%) of LOAD% of that maximum
# for DURATION seconds. xdoh gets
# a SIGHUP every HUP_EVERY seconds and its RSS (/proc/PID/status VmRSS) is
# sampled every SAMPLE_EVERY seconds. RSS after warm-up is the first sample at
# or after WARMUP seconds; growth from there to the end must be < 10%.
# Verdict PASS: no errors, every query answered and none with SERVFAIL, RSS
# growth < 10%.
#
# Bounded: every bench run has -l DURATION; the script kills what it started by
# process group (setsid) on exit, also on errors and Ctrl-C, and gives up
# after DURATION + 120 s whatever happens.
#
# Knobs (env): DURATION (600), WARMUP (min(60, DURATION/4)), PROBE (60), SEARCH (5),
#   MAX_P99 (100: ms, the p99 every stream must stay within for a trial to be clean, as
#   `xdoh bench --ramp`'s --max-p99), CONFIRM (3: repeats of the maximum's trial, 10% lower after each lossy one),
#   DIRECT (100: queries/s sent over DoH straight to BIND during the soak, on 8 connections so that
#   BIND spreads them over its threads, beside xdoh, to tell
#   a pause of BIND from one of xdoh's upstream path; 0: none; not in the verdict),
#   LOAD (80, percent of the probed maximum), RATE (unset; set: no search, soak at RATE QPS), UP_CONNS (2, xdoh's default: upstream.conns, DoH connections to BIND), UP_METHOD (post; or get), HUP_EVERY (60; 0: no reloads), SAMPLE_EVERY (5),
#   XDOH_BIN (bin/xdoh), XDOH_PORT (5340), BIND_DOH (8493), BIND_DO53 (5341), METRICS_PORT (9340),
#   WORK (/tmp/bench-peers-work), SHARED (../shared).
# Output: $WORK/results-soak/<stamp>/ summary.txt, rss.csv, timeline.csv (per second:
# in-flight, overload, upstream latency, CPU of xdoh and named, steal), bench-*.json,
# direct.json (the DIRECT stream), metrics.txt (xdoh's
# /metrics at the end; its failure counters are in summary.txt), logs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$root/../shared}
WORK=${WORK:-/tmp/bench-peers-work}
BIN=${XDOH_BIN:-$root/bin/xdoh}
DURATION=${DURATION:-600}
WARMUP=${WARMUP:-$((DURATION / 4 < 60 ? DURATION / 4 : 60))}
PROBE=${PROBE:-60} # RFC 2544 section 24: each trial at least 60 s
SEARCH=${SEARCH:-5}
MAX_P99=${MAX_P99:-100}
CONFIRM=${CONFIRM:-3}
UP_CONNS=${UP_CONNS:-2}
UP_METHOD=${UP_METHOD:-post}
DIRECT=${DIRECT:-100}
LOAD=${LOAD:-80}
HUP_EVERY=${HUP_EVERY:-60}
SAMPLE_EVERY=${SAMPLE_EVERY:-5}
XDOH_PORT=${XDOH_PORT:-5340} BIND_DOH=${BIND_DOH:-8493} BIND_DO53=${BIND_DO53:-5341} METRICS_PORT=${METRICS_PORT:-9340}
PKI=$WORK/pki CA=$WORK/pki/ca.pem
log() { echo "[soak] $*" >&2; }

[[ -x $BIN ]] || { log "xdoh binary $BIN not found (make build, or set XDOH_BIN)"; exit 1; }
bash "$SHARED/bench/setup.sh" >&2 # PKI, zones, query files (idempotent)
RES=$WORK/results-soak/$(date +%Y%m%d-%H%M%S)
D=$RES/run
mkdir -p "$D/named"

# ------------------------------------------------------------ process control
STARTED=()
start_bg() { # $1=log, rest=command; sets BG (pid == pgid under setsid)
  local logf=$1; shift
  setsid "$@" </dev/null >"$logf" 2>&1 &
  BG=$!; STARTED+=("$BG")
}
stop_pg() {
  local pg=$1 i
  kill -0 -- "-$pg" 2>/dev/null || { wait "$pg" 2>/dev/null || true; return 0; }
  kill -TERM -- "-$pg" 2>/dev/null || true
  for i in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
  kill -0 -- "-$pg" 2>/dev/null && { log "pgid $pg ignored TERM, sending KILL"; kill -KILL -- "-$pg" 2>/dev/null || true; }
  wait "$pg" 2>/dev/null || true
}
cleanup() { local pg; for pg in ${STARTED[@]+"${STARTED[@]}"}; do stop_pg "$pg"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# A watchdog in its own process group: the script ends by DURATION + PROBE x (SEARCH + CONFIRM + 1) + 120 s.
start_bg /dev/null bash -c "sleep $((DURATION + PROBE * (SEARCH + CONFIRM + 1) + 120)); echo '[soak] watchdog: time is up' >&2; kill -TERM $$"

port_busy() { ss -Hlnu "sport = :$1" | grep -q . || ss -Hlnt "sport = :$1" | grep -q .; }
for p in $XDOH_PORT $BIND_DOH $BIND_DO53 $METRICS_PORT; do
  port_busy "$p" && { log "port $p is in use - set XDOH_PORT/BIND_DOH/BIND_DO53"; exit 1; }
done

# ------------------------------------------------------------ generated files
ZONE=$D/aws.example.internal.zone
{
  echo "\$TTL 3600"
  echo "@  IN SOA ns.aws.example.internal. hostmaster.aws.example.internal. ( 1 3600 600 86400 60 )"
  echo "   IN NS  ns"
  echo "ns IN A   127.0.0.1"
  awk 'BEGIN{for(i=0;i<1000;i++) printf "name%d IN A 10.2.%d.%d\n", i, int(i/250), i%250+1}'
} >"$ZONE"
awk 'BEGIN{for(i=0;i<1000;i++) printf "name%d.aws.example.internal A\n", i}' >"$D/local.txt"
cp "$WORK/queries/hot.txt" "$D/hot.txt"

cat >"$D/xdoh.yaml" <<EOF
listeners:
  - name: soak
    protocols: [do53]
    do53: ["127.0.0.1:$XDOH_PORT"]
zones:
  - {name: aws.example.internal, file: $ZONE}
rules:
  - {name: onprem, domain: example.com, type: forward, targets: ["https://127.0.0.1:$BIND_DOH/dns-query"], ca_file: $CA, method: $UP_METHOD}
  - {name: bench, domain: bench.example, type: forward, targets: ["https://127.0.0.1:$BIND_DOH/dns-query"], ca_file: $CA, method: $UP_METHOD}
cache: {entries: 50000, max_bytes: 33554432}
upstream: {conns: $UP_CONNS}
metrics: {address: "127.0.0.1:$METRICS_PORT"}
EOF

cat >"$D/named/named.conf" <<EOF
tls doh-tls { cert-file "$PKI/server-chain.pem"; key-file "$PKI/server.key"; };
http doh-http { endpoints { "/dns-query"; }; listener-clients 1000; streams-per-connection 1000; };
options {
    directory "$D/named"; pid-file "$D/named/named.pid";
    session-keyfile "$D/named/session.key"; lock-file "$D/named/named.lock";
    listen-on port $BIND_DO53 { 127.0.0.1; };
    listen-on port $BIND_DOH tls doh-tls http doh-http { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no; allow-query { 127.0.0.0/8; }; dnssec-validation no; notify no;
    minimal-responses yes; tcp-clients 10000;
    http-listener-clients 1000; http-streams-per-connection 1000;
};
controls { };
logging { channel e { stderr; severity warning; print-time yes; }; category default { e; }; };
zone "example.com" { type primary; file "$WORK/named/db.example.com"; };
zone "bench.example" { type primary; file "$WORK/named/db.bench.example"; };
EOF
named-checkconf "$D/named/named.conf"

wait_answer() { # $1=port $2=name $3=expected A (Do53), $4=log
  local i
  for i in $(seq 40); do
    [[ $(kdig @127.0.0.1 -p "$1" +timeout=1 +retry=0 +short "$2" A 2>/dev/null) == "$3" ]] && return 0
    sleep 0.25
  done
  log "ERROR: no answer '$3' for $2 on :$1"; tail -20 "$4" >&2; exit 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
ticks() { # utime+stime of process $1 (all its threads), in clock ticks
  local s rest; s=$(<"/proc/$1/stat"); rest=${s##*) }
  # shellcheck disable=SC2086
  set -- $rest; echo $((${12} + ${13}))
}
busy() { local _c u n sy _r; read -r _c u n sy _r </proc/stat; echo $((u + n + sy)); }
HZ=$(getconf CLK_TCK)

start_bg "$D/named.log" named -g -c "$D/named/named.conf"; NPID=$BG
wait_answer "$BIND_DO53" foo.example.com 172.16.0.10 "$D/named.log"
start_bg "$D/xdoh.log" "$BIN" run -c "$D/xdoh.yaml"; XPID=$BG
wait_answer "$XDOH_PORT" name0.aws.example.internal 10.2.0.1 "$D/xdoh.log"
wait_answer "$XDOH_PORT" foo.example.com 172.16.0.10 "$D/xdoh.log"
{
  echo "date: $(date -Is)  host: $(uname -srm)  cpus: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "xdoh: $BIN ($(sha256sum "$BIN" | cut -c1-12))  named: $(named -v)"
  echo "duration ${DURATION}s, warm-up ${WARMUP}s, probe ${PROBE}s, load ${LOAD}% of max, SIGHUP every ${HUP_EVERY}s"
} | tee "$RES/summary.txt" >&2

# ------------------------------------------------------------ the streams
NAMES=(hits misses local nx)
WEIGHTS=(50 20 20 10)
src() { # $1=stream -> bench query-source flags
  case $1 in
    hits) echo "-d $D/hot.txt" ;;
    misses) echo "--random-sub bench.example" ;;
    local) echo "-d $D/local.txt" ;;
    nx) echo "--random-sub nx.aws.example.internal" ;;
  esac
}
# run_mix PREFIX SECONDS RATE_TOTAL (0: closed loop) -> waits; reports in $RES/PREFIX-*.json
run_mix() {
  local prefix=$1 secs=$2 total=$3 i pids=() load
  for i in "${!NAMES[@]}"; do
    if [[ $total == 0 ]]; then load="-q 50"; else load="-Q $((total * WEIGHTS[i] / 100))"; fi
    # shellcheck disable=SC2046
    start_bg "$RES/$prefix-${NAMES[i]}.log" "$BIN" bench $(src "${NAMES[i]}") -c 2 -T 1 $load -l "$secs" -t 2 \
      --json "$RES/$prefix-${NAMES[i]}.json" "127.0.0.1:$XDOH_PORT"
    pids+=("$BG")
  done
  BENCH_PIDS=("${pids[@]}")
}
sum_json() { # $1=prefix $2=jq expression -> sum over the streams
  local f s=0 v
  for f in "$RES/$1"-*.json; do v=$(jq -r "$2" "$f"); s=$(awk -v a="$s" -v b="$v" 'BEGIN{print a+b}'); done
  echo "$s"
}

if [[ -n ${RATE:-} ]]; then
  log "RATE=$RATE: no search, the soak runs at $RATE QPS"
  echo "soak rate (RATE): $RATE QPS" | tee -a "$RES/summary.txt" >&2
else
log "probing the maximum QPS of the mix for ${PROBE}s (closed loop, 4 streams x 2 sockets x 50 in flight)"
run_mix probe "$PROBE" 0
for p in "${BENCH_PIDS[@]}"; do wait "$p" || true; done
CLOSED=$(sum_json probe '.qps')
CLOSED=$(printf '%.0f' "$CLOSED")
((CLOSED > 0)) || { log "probe got no answers"; exit 1; }
# The maximum is the highest open-loop rate the mix runs clean at (RFC 2544's
# throughput: no loss; here at most 0.01% of queries lost, late or SERVFAIL),
# found by bisection below the closed-loop rate in SEARCH steps of PROBE s.
# Trials of a few seconds overstate it: a forwarded path near its limit
# holds up for seconds, its queue absorbing the excess, and fails only
# later; RFC 2544 asks for trials of at least 60 s.
# Loss alone overstates it too: an open loop with a 2 s timeout calls a
# query lost only once the queues ahead of it hold 2 s, so a trial could
# be "clean" with the misses' p99 at 700 ms and the hits' at 240 ms, and
# 80% of such a rate ran the box at 90% busy for ten minutes, short of
# CPU. A clean trial also keeps every stream's p99 within MAX_P99 ms.
# A closed loop slows down with its target; an open loop at that rate does
# not, so the closed-loop figure is only the upper bound.
clean() { # $1=prefix -> true if at most 0.01% lost or SERVFAIL and every p99 <= MAX_P99
  local sent bad p99
  sent=$(sum_json "$1" '.sent')
  bad=$(sum_json "$1" '(.timeouts // 0) + (.errors // 0) + (.rcodes.SERVFAIL // 0)')
  p99=$(jq -s '[.[].latency.p99_ms] | max' "$RES/$1"-*.json)
  log "$1: sent $sent, lost or SERVFAIL $bad, worst stream p99 $p99 ms"
  awk -v s="$sent" -v b="$bad" -v p="$p99" -v m="$MAX_P99" 'BEGIN{exit !(s > 0 && b <= s / 10000 && p <= m)}'
}
LO=0 HI=$CLOSED
for step in $(seq "$SEARCH"); do
  TRY=$(((LO + HI) / 2))
  run_mix "search$step" "$PROBE" "$TRY"
  for p in "${BENCH_PIDS[@]}"; do wait "$p" || true; done
  if clean "search$step"; then LO=$TRY; verdict=clean; else HI=$TRY; verdict="lossy or slow"; fi
  log "search $step: $TRY QPS open loop: $verdict"
done
MAX=$LO
# A trial can be lucky on a shared box: the maximum must be clean a second
# time. If the repeat is not, 10% less is tried, at most CONFIRM times.
for c in $(seq "$CONFIRM"); do
  ((MAX > 0)) || break
  run_mix "confirm$c" "$PROBE" "$MAX"
  for p in "${BENCH_PIDS[@]}"; do wait "$p" || true; done
  if clean "confirm$c"; then log "confirm $c: $MAX QPS clean again"; break; fi
  log "confirm $c: $MAX QPS lossy or slow this time"
  MAX=$((MAX * 9 / 10))
  ((c < CONFIRM)) || MAX=0
done
RATE=$((MAX * LOAD / 100))
((RATE > 0)) || { log "no clean rate found below $CLOSED QPS"; exit 1; }
echo "max QPS: $MAX clean in open loop (at most 0.01% lost or SERVFAIL, every p99 within ${MAX_P99} ms; closed loop: $CLOSED); soak rate ${LOAD}%: $RATE QPS" | tee -a "$RES/summary.txt" >&2
fi

# ------------------------------------------------------------ the timeline
# Once a second, in its own process group: xdoh's upstream in-flight gauge
# and counters (overload, forwarded, upstream exchanges and their summed
# time, so per-second mean upstream latency), its connections to BIND
# (both targets use the same BIND, so 2 x upstream.conns when none are
# extra), the CPU ticks xdoh and named
# used, and the machine's busy and steal ticks (time the hypervisor gave
# to others), and the drops counted on xdoh's UDP sockets (ss skmem d: a
# full receive buffer). Columns are cumulative except inflight and
# up_conns; timeline.csv.
timeline() { # $1=xdoh pid $2=named pid $3=out
  echo "t_s,inflight,overload,forwarded,up_count,up_sum_s,up_conns,xdoh_ticks,named_ticks,busy_ticks,steal_ticks,xdoh_udp_drops" >"$3"
  local t0 m s rest
  t0=$(date +%s.%N)
  while sleep 1; do
    m=$(curl -s --max-time 0.5 "http://127.0.0.1:$METRICS_PORT/metrics" | awk '
      /^xdoh_forwarder_upstream_inflight /{i=$2} /^xdoh_forwarder_overload_total /{o=$2}
      /^xdoh_forwarder_forwarded_total /{f=$2}
      /^xdoh_upstream_duration_seconds_count/{c+=$2} /^xdoh_upstream_duration_seconds_sum/{u+=$2}
      /^xdoh_upstream_connections/{n+=$2}
      END{printf "%d,%d,%d,%d,%.3f,%d", i, o, f, c, u, n}')
    read -r _c u n sy _i _w _q _sq st _r </proc/stat
    d=$(ss -uamnH "sport = :$XDOH_PORT" | grep -o 'skmem:([^)]*)' | grep -o ',d[0-9]*' | tr -d ',d' | awk '{s += $1} END {print s + 0}')
    echo "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.1f", a-b}'),$m,$(ticks "$1" 2>/dev/null || echo 0),$(ticks "$2" 2>/dev/null || echo 0),$((u + n + sy)),$st,$d" >>"$3"
  done
}

# ------------------------------------------------------------ the soak
echo "t_s,rss_kib" >"$RES/rss.csv"
HUPS=0 RSS_WARM="" T0=$(date +%s) X0=$(ticks "$XPID") B0=$(busy)
# xdoh's counters now, so that the summary shows what the soak itself added
# (the search's lossy trials count failures too).
curl -s --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" >"$RES/metrics-start.txt" || true
# The kernel's UDP counters (this network namespace), to tell queries or
# answers dropped in a socket buffer from ones xdoh never answered.
udp_snmp() { awk '/^Udp:/ {if (!h) {for (i = 2; i <= NF; i++) n[i] = $i; h = 1} else for (i = 2; i <= NF; i++) printf "%s=%s ", n[i], $i}' /proc/net/snmp; }
SNMP0=$(udp_snmp)
run_mix soak "$DURATION" "$RATE"
SOAK_BENCH=("${BENCH_PIDS[@]}")
if ((DIRECT > 0)); then # BIND's own latency, per second, for comparing with xdoh's upstream path
  start_bg "$RES/direct.log" "$BIN" bench --random-sub bench.example -c 8 -T 1 -Q "$DIRECT" -l "$DURATION" -t 2 \
    --ca-file "$CA" --json "$RES/direct.json" "https://127.0.0.1:$BIND_DOH/dns-query"
  SOAK_BENCH+=("$BG")
fi
start_bg /dev/null bash -c "$(declare -f timeline ticks); METRICS_PORT=$METRICS_PORT XDOH_PORT=$XDOH_PORT timeline $XPID $NPID $RES/timeline.csv"
BENCH_PIDS=("${SOAK_BENCH[@]}")
next_hup=$HUP_EVERY
while :; do
  alive=0
  for p in "${BENCH_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  kill -0 "$XPID" 2>/dev/null || { log "xdoh died"; tail -20 "$D/xdoh.log" >&2; exit 1; }
  t=$(($(date +%s) - T0))
  r=$(rss_kib "$XPID")
  echo "$t,$r" >>"$RES/rss.csv"
  [[ -z $RSS_WARM && $t -ge $WARMUP ]] && RSS_WARM=$r
  ((alive)) || break
  if ((HUP_EVERY > 0 && t >= next_hup && t < DURATION)); then
    kill -HUP "$XPID"; HUPS=$((HUPS + 1)); next_hup=$((next_hup + HUP_EVERY))
    log "t=${t}s SIGHUP #$HUPS, RSS $((r / 1024)) MiB"
  fi
  sleep "$SAMPLE_EVERY"
done
for p in "${BENCH_PIDS[@]}"; do wait "$p" || true; done
RSS_END=$(rss_kib "$XPID") X1=$(ticks "$XPID") B1=$(busy) T1=$(date +%s)
SNMP1=$(udp_snmp)
: "${RSS_WARM:=$RSS_END}"

SENT=$(sum_json soak '.sent') ANS=$(sum_json soak '.answered') ERR=$(sum_json soak '.errors')
TMO=$(sum_json soak '.timeouts') UNSENT=$(sum_json soak '.unsent')
SF=$(sum_json soak '(.rcodes.SERVFAIL // 0)')
GROWTH=$(awk -v a="$RSS_WARM" -v b="$RSS_END" 'BEGIN{printf "%.1f", (b-a)*100/a}')
{
  printf '%-7s %9s %9s %7s %8s %7s %8s %8s %8s\n' stream rate sent answered errors timeouts NOERROR NXDOMAIN SERVFAIL
  for i in "${!NAMES[@]}"; do
    f=$RES/soak-${NAMES[i]}.json
    jq -r --arg n "${NAMES[i]}" '[$n, (.settings.rate|floor), .sent, .answered, .errors, .timeouts,
      (.rcodes.NOERROR // 0), (.rcodes.NXDOMAIN // 0), (.rcodes.SERVFAIL // 0)] | @tsv' "$f" |
      awk -F'\t' '{printf "%-7s %9s %9s %9s %7s %8s %8s %8s %8s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9}'
  done
  echo "total: sent $SENT, answered $ANS, errors $ERR, timeouts $TMO, unsent $UNSENT over ${DURATION}s at $RATE QPS, $HUPS SIGHUPs"
  echo "lost (no answer within 2 s): $((SENT - ANS)); errors are mostly late answers (after the 2 s timeout)"
  awk -v x=$((X1 - X0)) -v b=$((B1 - B0)) -v hz="$HZ" -v s=$((T1 - T0)) -v n="$(nproc)" 'BEGIN{
    printf "CPU over the soak: xdoh %.0f%% of one core; the whole machine %.0f%% of %d cores (xdoh, BIND, the 4 bench runs and anything else)\n",
      x*100/hz/s, b*100/hz/s/n, n}'
  curl -s --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" >"$RES/metrics.txt" || true
  echo "xdoh counters (failures) added during the soak:"
  grep -hE '^xdoh_' "$RES/metrics-start.txt" "$RES/metrics.txt" |
    grep -iE 'servfail|overload|upstream_errors|dropped|stale|timeout' |
    awk '{v[$1] = (seen[$1]++ ? $NF - v[$1] : $NF)} END {for (k in v) if (seen[k] == 2 && v[k] != 0) print "  " k, v[k]}' | sort || true
  echo "kernel UDP drops during the soak (/proc/net/snmp):$(for k in InErrors RcvbufErrors SndbufErrors; do
    a=$(tr ' ' '\n' <<<"$SNMP0" | sed -n "s/^$k=//p"); b=$(tr ' ' '\n' <<<"$SNMP1" | sed -n "s/^$k=//p"); printf ' %s %s' "$k" $((b - a))
  done)"
  if [[ -f $RES/direct.json ]]; then
    jq -r '"BIND direct over DoH (\(.settings.rate|floor) q/s, not in the verdict): sent \(.sent), answered \(.answered), p99 \(.latency.p99_ms) ms, max \(.latency.max_ms) ms, seconds with p99 over 100 ms: \([.timeline[] | select(.p99_ms > 100)] | length)"' "$RES/direct.json"
    # The misses' worst seconds beside BIND's own in the same second.
    jq -rs '(.[0].timeline | map({(.t|tostring): .p99_ms}) | add) as $d | .[1].timeline
      | map(select(.p99_ms > 200)) | sort_by(-.p99_ms) | .[:5][]
      | "  misses p99 \(.p99_ms) ms at \(.t) s; BIND direct p99 then \($d[.t|tostring] // "-") ms"' "$RES/direct.json" "$RES/soak-misses.json"
  fi
  echo "RSS after warm-up (${WARMUP}s): $((RSS_WARM / 1024)) MiB, at end: $((RSS_END / 1024)) MiB, growth ${GROWTH}% (limit 10%)"
} | tee -a "$RES/summary.txt"
verdict=PASS
[[ $ERR == 0 && $SENT == "$ANS" && $UNSENT == 0 && $SF == 0 ]] || verdict=FAIL
awk -v g="$GROWTH" 'BEGIN{exit !(g < 10)}' || verdict=FAIL
grep -qi "panic\|fatal" "$D/xdoh.log" && verdict=FAIL
echo "verdict: $verdict  (results: $RES)" | tee -a "$RES/summary.txt"
[[ $verdict == PASS ]]
