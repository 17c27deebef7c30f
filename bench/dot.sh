#!/usr/bin/env bash
# bench/dot.sh - Do53 in, DNS-over-TLS out: xdoh against dnsdist 1.7 in the
# same run, BIND 9.18 (listen-on tls) as the upstream; and xdoh forwarding over
# DNS-over-QUIC to a second xdoh (BIND 9.18 has no DoQ). Built like
# ../shared/bench (which has only DoH rows): same PKI, zones and query files
# (its setup.sh makes them). Loopback only; every dnsperf run is bounded by -l
# DURATION; every process started here runs under setsid and is stopped by its
# process-group id on exit (also on errors and Ctrl-C).
#
# Topology (all 127.0.0.1):
#   dnsperf Do53 ─► xdoh    :5330 (no cache) ─DoT──► BIND :8853 (bench.example, example.com)
#   dnsperf Do53 ─► dnsdist :5331 (no cache) ─DoT──► BIND :8853
#   dnsperf Do53 ─► xdoh    :5330 (no cache) ─DoQ──► xdoh :8854/udp (same zones, local)
# Rows (peer / transport in / scenario), dnsperf -c CLIENTS -q OUTSTANDING:
#   hot-nocache  queries/hot.txt looped: every query is forwarded (no cache)
#   miss-unique  queries/miss.txt: 100,000 distinct names, each forwarded once
# Columns: QPS, avg_ms, lost, NOERR%, fwd% / fwd_us/q (the forwarder's CPU from
# /proc/PID/stat over the run; per completed query), up% (the upstream's CPU),
# perf% (dnsperf), other% (machine CPU none of them used; '!' over 15%: rerun).
# 100% = one core. Each row first waits for a quiet box.
# Knobs (env): DURATION (5), CLIENTS (4), OUTSTANDING (100), ONLY (regex on
#   peer/transport/scenario), QUIET_WAIT (60), XDOH_BIN (bin/xdoh), WORK
#   (/tmp/bench-peers-work), SHARED (../shared), GOMAXPROCS (passed to xdoh).
# Output: $WORK/results-dot/<stamp>/ table.txt, env.txt, raw dnsperf output.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$root/../shared}
WORK=${WORK:-/tmp/bench-peers-work}
BIN=${XDOH_BIN:-$root/bin/xdoh}
DURATION=${DURATION:-5} CLIENTS=${CLIENTS:-4} OUTSTANDING=${OUTSTANDING:-100}
ONLY=${ONLY:-}
QUIET_WAIT=${QUIET_WAIT:-60}
XDOH=5330 DD=5331 BIND_DO53=5332 BIND_DOT=8853 DOQ=8854 DOQ_DO53=5333
PKI=$WORK/pki CA=$WORK/pki/ca.pem
D=$WORK/dot
HZ=$(getconf CLK_TCK)
log() { echo "[dot] $*" >&2; }

[[ -x $BIN ]] || { log "xdoh binary $BIN not found (make build, or set XDOH_BIN)"; exit 1; }
bash "$SHARED/bench/setup.sh" >&2    # PKI, zones, query files (idempotent)
mkdir -p "$D/named" "$WORK/logs"

# ------------------------------------------------------------ generated files
cat >"$D/named/named.conf" <<EOF
tls dot-tls { cert-file "$PKI/server-chain.pem"; key-file "$PKI/server.key"; };
options {
    directory "$D/named"; pid-file "$D/named/named.pid";
    session-keyfile "$D/named/session.key"; lock-file "$D/named/named.lock";
    listen-on port $BIND_DO53 { 127.0.0.1; };
    listen-on port $BIND_DOT tls dot-tls { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no; allow-query { 127.0.0.0/8; }; dnssec-validation no; notify no;
    minimal-responses yes; tcp-clients 10000;
};
controls { };
logging { channel e { stderr; severity info; print-time yes; }; category default { e; }; };
zone "bench.example" { type primary; file "$WORK/named/db.bench.example"; };
zone "example.com" { type primary; file "$WORK/named/db.example.com"; };
EOF
named-checkconf "$D/named/named.conf"

# xdoh forwarding everything (no cache) to $1; $2 = config file.
xdoh_conf() {
  cat >"$2" <<EOF
listeners:
  - {name: bench, protocols: [do53], do53: ["127.0.0.1:$XDOH"]}
default: {targets: ["$1"], ca_file: $CA, tls_server_name: localhost}
cache: {enabled: false}
EOF
}
xdoh_conf "tls://127.0.0.1:$BIND_DOT" "$D/xdoh-dot.yaml"
xdoh_conf "quic://127.0.0.1:$DOQ" "$D/xdoh-doq.yaml"
# The DoQ upstream: a second xdoh serving the same zones itself.
cat >"$D/xdoh-doq-server.yaml" <<EOF
listeners:
  - name: doq
    protocols: [do53, doq]
    do53: ["127.0.0.1:$DOQ_DO53"]
    doq: {address: "127.0.0.1:$DOQ", cert: $PKI/server-chain.pem, key: $PKI/server.key}
zones:
  - {name: bench.example, file: $WORK/named/db.bench.example}
  - {name: example.com, file: $WORK/named/db.example.com}
EOF
cat >"$D/dnsdist.conf" <<EOF
setLocal('127.0.0.1:$DD')
setSecurityPollSuffix('')
newServer({address='127.0.0.1:$BIND_DOT', tls='openssl', subjectName='localhost',
  caStore='$CA', validateCertificates=true,
  checkName='foo.example.com.', checkType='A', mustResolve=true})
EOF
dnsdist --check-config -C "$D/dnsdist.conf" >&2

# ------------------------------------------------------------ process control
STARTED=()
start_bg() { # $1=log, rest=command; sets BG (pid == pgid: setsid does not fork here)
  local logf=$1; shift
  setsid "$@" </dev/null >"$logf" 2>&1 &
  BG=$!; STARTED+=("$BG")
}
stop_pg() {
  local pg=$1 i
  kill -0 -- "-$pg" 2>/dev/null || return 0
  kill -TERM -- "-$pg" 2>/dev/null || true
  for i in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
  kill -0 -- "-$pg" 2>/dev/null && { log "pgid $pg ignored TERM, sending KILL"; kill -KILL -- "-$pg" 2>/dev/null || true; }
  wait "$pg" 2>/dev/null || true
}
cleanup() { local pg; for pg in ${STARTED[@]+"${STARTED[@]}"}; do stop_pg "$pg"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { ss -Hlnu "sport = :$1" | grep -q . || ss -Hlnt "sport = :$1" | grep -q .; }
for p in $XDOH $DD $BIND_DO53 $BIND_DOT $DOQ $DOQ_DO53; do
  port_busy "$p" && { log "port $p is in use (another bench running?) - stop it first"; exit 1; }
done

ticks() { # utime+stime of process $1 (all its threads), in clock ticks
  local s rest; s=$(<"/proc/$1/stat"); rest=${s##*) }
  # shellcheck disable=SC2086
  set -- $rest; echo $(( ${12} + ${13} ))
}
busy() { local _c u n sy _r; read -r _c u n sy _r </proc/stat; echo $((u + n + sy)); }
wait_quiet() { # other load on the 2 cores skews rows: wait (<= QUIET_WAIT s) for 2 s below 10% CPU
  local i ok=0 b0
  for ((i = 0; i < QUIET_WAIT; i++)); do
    b0=$(busy); sleep 1
    if (( ($(busy) - b0) * 100 / HZ < 10 )); then ((++ok < 2)) || return 0; else ok=0; fi
  done
  ((QUIET_WAIT == 0)) || log "WARNING: machine still busy, measuring anyway (see other%)"
}
wait_answer() { # $1=port $2=log: waits for foo.example.com A over Do53
  local i
  for i in $(seq 60); do
    [[ $(kdig @127.0.0.1 -p "$1" +timeout=1 +retry=0 +short foo.example.com A 2>/dev/null) == 172.16.0.10 ]] && return 0
    sleep 0.25
  done
  log "ERROR: no answer on :$1"; tail -20 "$2" >&2; exit 1
}

# ------------------------------------------------------------ one row
RES=$WORK/results-dot/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RES"
TABLE=$RES/table.txt
{
  echo "date: $(date -Is)  host: $(uname -srm)  cpus: $(nproc)  GOMAXPROCS=${GOMAXPROCS:-unset}"
  echo "xdoh: $BIN ($(sha256sum "$BIN" | cut -c1-12))"
  echo "named: $(named -v)  dnsdist: $(dnsdist --version | head -1)"
  echo "dnsperf: $(dnsperf -h 2>&1 | grep -m1 Version)  -l $DURATION -c $CLIENTS -q $OUTSTANDING -t 2"
} | tee "$RES/env.txt" >&2
printf '%-8s %-4s %-12s %9s %9s %7s %7s %6s %9s %5s %6s %6s\n' \
  peer in scenario QPS avg_ms lost NOERR% fwd% fwd_us/q up% perf% other% | tee "$TABLE"

sel() { [[ -z $ONLY || $1 =~ $ONLY ]]; }
# row PEER IN SCENARIO FWD_PID UP_PID PORT QFILE
row() {
  local peer=$1 in=$2 scen=$3 pid=$4 up=$5 port=$6 qf=$7
  sel "$peer/$in/$scen" || return 0
  local out=$RES/$peer.$in.$scen.txt mode=()
  [[ $in == tcp ]] && mode=(-m tcp)
  local cmd=(dnsperf -s 127.0.0.1 -p "$port" -d "$qf" -l "$DURATION" -t 2 -c "$CLIENTS" -q "$OUTSTANDING" "${mode[@]}")
  echo "# ${cmd[*]}" >"$out"
  local s0 s1 u0 u1 t0 t1 b0 b1
  wait_quiet
  s0=$(ticks "$pid"); u0=$(ticks "$up"); b0=$(busy); t0=$(date +%s.%N)
  /usr/bin/time -f 'DNSPERF_CPU %U %S' "${cmd[@]}" >>"$out" 2>&1 || log "dnsperf failed, see $out"
  t1=$(date +%s.%N); b1=$(busy); s1=$(ticks "$pid"); u1=$(ticks "$up")
  awk -v peer="$peer" -v tin="$in" -v scen="$scen" -v s=$((s1 - s0)) -v u=$((u1 - u0)) -v b=$((b1 - b0)) \
      -v hz="$HZ" -v t0="$t0" -v t1="$t1" '
    /Queries completed:/ { done=$3 }
    /Queries lost:/      { lost=$3 }
    /Queries per second:/ { qps=$4 }
    /Average Latency \(s\):/ && !seen { lat=$4*1000; seen=1 }
    /Response codes:/    { for(i=3;i<=NF;i++) if($i=="NOERROR") n=$(i+1) }
    /^DNSPERF_CPU/       { pc=$2+$3 }
    END {
      wall=t1-t0; if (wall<=0) wall=1
      o=100*((b-s-u)/hz-pc)/wall; if (o<0) o=0
      printf "%-8s %-4s %-12s %9.0f %9.3f %7d %7.2f %6.0f %9.1f %5.0f %6.0f %6s\n", peer, tin, scen,
        qps, lat, lost, done ? 100*n/done : 0, 100*s/hz/wall, done ? 1e6*s/hz/done : 0,
        100*u/hz/wall, 100*pc/wall, sprintf("%.0f%s", o, o>15 ? "!" : "")
    }' "$out" | tee -a "$TABLE"
}
rows() { # $1=peer $2=forwarder pid $3=upstream pid $4=port
  row "$1" udp hot-nocache "$2" "$3" "$4" "$WORK/queries/hot.txt"
  row "$1" tcp hot-nocache "$2" "$3" "$4" "$WORK/queries/hot.txt"
  row "$1" udp miss-unique "$2" "$3" "$4" "$WORK/queries/miss.txt"
}
selpeer() { [[ -z $ONLY ]] || printf '%s\n' "$1"/{udp,tcp}/{hot-nocache,miss-unique} | grep -qE "$ONLY"; }

# ------------------------------------------------------------ DoT: xdoh, dnsdist
if selpeer xdoh-dot || selpeer dnsdist; then
  log "starting BIND (DoT :$BIND_DOT)"
  start_bg "$WORK/logs/dot-named.log" named -g -c "$D/named/named.conf"; BPID=$BG
  for i in $(seq 40); do
    [[ $(kdig @127.0.0.1 -p $BIND_DOT +tls-ca="$CA" +tls-hostname=localhost +timeout=1 +retry=0 +short foo.example.com A 2>/dev/null) == 172.16.0.10 ]] && break
    ((i < 40)) || { log "ERROR: BIND not answering over DoT"; tail -20 "$WORK/logs/dot-named.log" >&2; exit 1; }
    sleep 0.25
  done
  if selpeer xdoh-dot; then
    start_bg "$WORK/logs/dot-xdoh.log" "$BIN" run -c "$D/xdoh-dot.yaml"; XPID=$BG
    wait_answer $XDOH "$WORK/logs/dot-xdoh.log"
    rows xdoh-dot "$XPID" "$BPID" $XDOH
    stop_pg "$XPID"
  fi
  if selpeer dnsdist; then
    start_bg "$WORK/logs/dot-dnsdist.log" dnsdist --supervised --disable-syslog -C "$D/dnsdist.conf"; DPID=$BG
    wait_answer $DD "$WORK/logs/dot-dnsdist.log"
    rows dnsdist "$DPID" "$BPID" $DD
    stop_pg "$DPID"
  fi
  stop_pg "$BPID"
fi

# ------------------------------------------------------------ DoQ: xdoh to xdoh
if selpeer xdoh-doq; then
  start_bg "$WORK/logs/dot-doq-server.log" "$BIN" run -c "$D/xdoh-doq-server.yaml"; QPID=$BG
  wait_answer $DOQ_DO53 "$WORK/logs/dot-doq-server.log"
  start_bg "$WORK/logs/dot-xdoh-doq.log" "$BIN" run -c "$D/xdoh-doq.yaml"; XPID=$BG
  wait_answer $XDOH "$WORK/logs/dot-xdoh-doq.log"
  rows xdoh-doq "$XPID" "$QPID" $XDOH
fi

log "results: $RES (table.txt, env.txt, raw dnsperf output per row)"
log "fwd% / up% / perf%: CPU of the forwarder / its upstream / dnsperf over the run (100% = one core);"
log "fwd_us/q: forwarder CPU per completed query (clock-tick resolution: 1e6/$HZ us per run)"
log "other%: machine-wide user+sys CPU not used by them; '!' = disturbed row, rerun"
