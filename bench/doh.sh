#!/usr/bin/env bash
# bench/doh.sh - xdoh's INBOUND DoH listener against BIND 9.18 serving the same
# zone, measured with dnsperf 2.10 (-m doh). Loopback only; every dnsperf run is
# bounded by -l DURATION; every process started here runs under setsid and is
# stopped by its process-group id on exit (also on errors and Ctrl-C).
#
# Topology (all 127.0.0.1):
#   dnsperf -m doh GET|POST ─► xdoh :8463 /dns-query (Do53 :5310)  zone aws.example.internal
#                                └─ example.com ─DoH─► shared BIND :8443 (cache on: foo row = cache hits)
#   dnsperf -m doh GET|POST ─► BIND :8453 /dns-query (Do53 :5311)  zones aws.example.internal, example.com
#   dnsperf Do53 UDP ─► dnsdist 1.7 :5321 (no cache) ─DoH (POST)─► xdoh :8463 | BIND :8453
# Rows (name = server/method/scenario):
#   local-lone    -c 1 -q 1           nameN.aws.example.internal A, N = 0..999 looped
#   h2load-lone   h2load -c 1 -m 1 -D DURATION, name0.aws.example.internal A: the same
#                 lone query from a client without dnsperf 2.10's lost wake-up (its
#                 sender can miss the receiver's signal and sleep 100 ms; the faster
#                 the answer, the more often), so QPS and avg_ms are the server's
#   local-loaded  -c 8 -T 2 -q 200    same names
#   foo-fwd-cached (xdoh) / foo-auth (bind): foo.example.com A, loaded
#   chain-loaded  -c 4 -q 100, chain-lone -c 1 -q 1: through dnsdist (method = dnsdist's outgoing DoH)
# Columns: QPS, avg_ms, lost (queries), NOERR%, srv% / srv_us/q (server CPU from
# /proc/PID/stat utime+stime over the run; per completed query), perf% (dnsperf
# CPU; h2load's on its rows, where lost counts failed requests and NOERR% is
# the 2xx share), dd% (dnsdist CPU, chain rows), other% (machine user+sys CPU
# none of them used; '!' over 15%: rerun). 100% = one core. Each row first waits for a quiet box.
# Knobs (env): DURATION (dnsperf -l, default 5), ONLY (regex on row name), QUIET_WAIT (60),
#   PIN_SERVER / PIN_LOADGEN / PIN_DNSDIST (taskset -c CPU list for the server under
#   test, dnsperf/h2load, dnsdist; empty: not pinned),
#   DNSPERF (the dnsperf binary; default: dnsperf on PATH), XDOH_BIN (default bin/xdoh), WORK (/tmp/bench-peers-work), SHARED (../shared),
#   GOMAXPROCS (passed through to xdoh).
# Output: $WORK/results-doh/<stamp>/ table.txt, env.txt, raw dnsperf output per row.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$root/../shared}
WORK=${WORK:-/tmp/bench-peers-work}
BIN=${XDOH_BIN:-$root/bin/xdoh}
DURATION=${DURATION:-5}
ONLY=${ONLY:-}
DNSPERF=${DNSPERF:-dnsperf}
pin() { [[ -z $1 ]] || echo taskset -c "$1"; }   # command prefix for an optional CPU pin
SRVPIN=$(pin "${PIN_SERVER:-}") GENPIN=$(pin "${PIN_LOADGEN:-}") DDPIN=$(pin "${PIN_DNSDIST:-}")
QUIET_WAIT=${QUIET_WAIT:-60}   # max seconds to wait for a quiet box before each row (0: don't)
XDOH_DO53=5310 XDOH_DOH=8463 BIND_DO53=5311 BIND_DOH=8453 DD_PORT=5321 UP_DOH=8443
PKI=$WORK/pki CA=$WORK/pki/ca.pem
D=$WORK/doh            # everything this script generates
HZ=$(getconf CLK_TCK)
log() { echo "[doh] $*" >&2; }

[[ -x $BIN ]] || { log "xdoh binary $BIN not found (make build, or set XDOH_BIN)"; exit 1; }
bash "$SHARED/bench/setup.sh" >&2    # PKI, shared BIND upstream config (idempotent)
mkdir -p "$D"/{named,q} "$WORK/logs"

# ------------------------------------------------------------ generated files
ZONE=$D/aws.example.internal.zone
{
  echo "\$TTL 3600"
  echo "@  IN SOA ns.aws.example.internal. hostmaster.aws.example.internal. ( 1 3600 600 86400 3600 )"
  echo "   IN NS  ns"
  echo "ns IN A   127.0.0.1"
  awk 'BEGIN{for(i=0;i<1000;i++) printf "name%d IN A 10.2.%d.%d\n", i, int(i/250), i%250+1}'
} >"$ZONE"
awk 'BEGIN{for(i=0;i<1000;i++) printf "name%d.aws.example.internal A\n", i}' >"$D/q/local.txt"
echo "foo.example.com A" >"$D/q/foo.txt"
# name0.aws.example.internal A, ID 0, RD: the body of h2load's POST and, in
# base64url, its GET.
printf '\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05name0\x03aws\x07example\x08internal\x00\x00\x01\x00\x01' >"$D/q/name0.bin"
NAME0_B64=$(base64 -w0 "$D/q/name0.bin" | tr '+/' '-_' | tr -d '=')

cat >"$D/xdoh.yaml" <<EOF
listeners:
  - name: bench
    protocols: [do53, doh]
    do53: ["127.0.0.1:$XDOH_DO53"]
    doh: {address: "127.0.0.1:$XDOH_DOH", path: /dns-query, cert: $PKI/server-chain.pem, key: $PKI/server.key}
zones:
  - {name: aws.example.internal, file: $ZONE}
rules:
  - {name: onprem, domain: example.com, type: forward, targets: ["https://127.0.0.1:$UP_DOH/dns-query"], ca_file: $CA}
cache: {entries: 100000}
EOF

# Second BIND instance, same DoH shape as setup.sh's, own dirs/ports/lock file.
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
logging { channel e { stderr; severity info; print-time yes; }; category default { e; }; };
zone "aws.example.internal" { type primary; file "$ZONE"; };
zone "example.com" { type primary; file "$WORK/named/db.example.com"; };
EOF
named-checkconf "$D/named/named.conf"

dnsdist_conf() { # $1=backend DoH port -> config file path
  local f=$D/dnsdist-$1.conf
  cat >"$f" <<EOF
setLocal('127.0.0.1:$DD_PORT')
setSecurityPollSuffix('')
setOutgoingDoHWorkerThreads(1)
newServer({address='127.0.0.1:$1', tls='openssl', subjectName='localhost', dohPath='/dns-query',
  caStore='$CA', validateCertificates=true,
  checkName='name0.aws.example.internal.', checkType='A', mustResolve=true})
EOF
  dnsdist --check-config -C "$f" >&2
  echo "$f"
}

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
for p in $XDOH_DO53 $XDOH_DOH $BIND_DO53 $BIND_DOH $DD_PORT $UP_DOH 5301 8053; do
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
wait_doh() { # $1=port $2=name $3=expected A, $4=log: waits for a DoH answer
  local i
  for i in $(seq 40); do
    [[ $(kdig @127.0.0.1 -p "$1" +https=/dns-query +tls-ca="$CA" +tls-hostname=localhost \
         +timeout=1 +retry=0 +short "$2" A 2>/dev/null) == "$3" ]] && return 0
    sleep 0.25
  done
  log "ERROR: no DoH answer '$3' for $2 on :$1"; tail -20 "$4" >&2; exit 1
}

# ------------------------------------------------------------ one row
RES=$WORK/results-doh/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RES"
TABLE=$RES/table.txt
{
  echo "date: $(date -Is)  host: $(uname -srm)  cpus: $(nproc)  GOMAXPROCS=${GOMAXPROCS:-unset}  pins: server=${PIN_SERVER:-} loadgen=${PIN_LOADGEN:-} dnsdist=${PIN_DNSDIST:-}"
  echo "xdoh: $BIN ($(sha256sum "$BIN" | cut -c1-12))"
  echo "named: $(named -v)  dnsdist: $(dnsdist --version | head -1)"
  echo "dnsperf: $DNSPERF, $("$DNSPERF" -h 2>&1 | grep -m1 Version)  -l $DURATION -t 2"
} | tee "$RES/env.txt" >&2
printf '%-5s %-5s %-15s %9s %9s %7s %7s %6s %9s %6s %5s %6s\n' \
  server method scenario QPS avg_ms lost NOERR% srv% srv_us/q perf% dd% other% | tee "$TABLE"

sel() { [[ -z $ONLY || $1 =~ $ONLY ]]; }
DD=""   # dnsdist pid while a chain row runs
# row SERVER METHOD SCENARIO SERVER_PID PORT QFILE dnsperf-args...
#   METHOD GET|POST: dnsperf speaks DoH to PORT; anything else: Do53 UDP to PORT.
row() {
  local srv=$1 meth=$2 scen=$3 pid=$4 port=$5 qf=$6; shift 6
  sel "$srv/$meth/$scen" || return 0
  local out=$RES/$srv.$meth.$scen.txt args=()
  [[ $scen != chain-* ]] &&
    args=(-m doh -O "doh-uri=https://localhost:$port/dns-query" -O "doh-method=$meth")
  local cmd=($GENPIN "$DNSPERF" -s 127.0.0.1 -p "$port" -d "$qf" -l "$DURATION" -t 2 "${args[@]}" "$@")
  echo "# ${cmd[*]}" >"$out"
  local s0 s1 d0=0 d1=0 t0 t1 b0 b1
  wait_quiet
  s0=$(ticks "$pid"); [[ -n $DD ]] && d0=$(ticks "$DD"); b0=$(busy); t0=$(date +%s.%N)
  /usr/bin/time -f 'DNSPERF_CPU %U %S' "${cmd[@]}" >>"$out" 2>&1 || log "dnsperf failed, see $out"
  t1=$(date +%s.%N); b1=$(busy); s1=$(ticks "$pid"); [[ -n $DD ]] && d1=$(ticks "$DD")
  awk -v srv="$srv" -v meth="$meth" -v scen="$scen" -v s=$((s1 - s0)) -v d=$((d1 - d0)) -v b=$((b1 - b0)) \
      -v dd="${DD:+1}" -v hz="$HZ" -v t0="$t0" -v t1="$t1" '
    /Queries completed:/ { done=$3 }
    /Queries lost:/      { lost=$3 }
    /Queries per second:/ { qps=$4 }
    /Average Latency \(s\):/ && !seen { lat=$4*1000; seen=1 }
    /Response codes:/    { for(i=3;i<=NF;i++) if($i=="NOERROR") n=$(i+1) }
    /^DNSPERF_CPU/       { pc=$2+$3 }
    END {
      wall=t1-t0; if (wall<=0) wall=1
      o=100*((b-s-d)/hz-pc)/wall; if (o<0) o=0
      printf "%-5s %-5s %-15s %9.0f %9.3f %7d %7.2f %6.0f %9.1f %6.0f %5s %6s\n", srv, meth, scen,
        qps, lat, lost, done ? 100*n/done : 0, 100*s/hz/wall, done ? 1e6*s/hz/done : 0,
        100*pc/wall, dd ? sprintf("%.0f", 100*d/hz/wall) : "-", sprintf("%.0f%s", o, o>15 ? "!" : "")
    }' "$out" | tee -a "$TABLE"
}

# h2row SERVER METHOD SERVER_PID PORT: one lone h2load run (see h2load-lone above).
h2row() {
  local srv=$1 meth=$2 pid=$3 port=$4
  sel "$srv/$meth/h2load-lone" || return 0
  local out=$RES/$srv.$meth.h2load-lone.txt url="https://localhost:$port/dns-query" args=()
  if [[ $meth == GET ]]; then url+="?dns=$NAME0_B64"; else args=(-d "$D/q/name0.bin" -H 'content-type: application/dns-message'); fi
  local cmd=($GENPIN h2load -c 1 -m 1 -D "$DURATION" "${args[@]}" "$url")
  echo "# ${cmd[*]}" >"$out"
  local s0 s1 t0 t1 b0 b1
  wait_quiet
  s0=$(ticks "$pid"); b0=$(busy); t0=$(date +%s.%N)
  /usr/bin/time -f 'H2LOAD_CPU %U %S' "${cmd[@]}" >>"$out" 2>&1 || log "h2load failed, see $out"
  t1=$(date +%s.%N); b1=$(busy); s1=$(ticks "$pid")
  awk -v srv="$srv" -v meth="$meth" -v s=$((s1 - s0)) -v b=$((b1 - b0)) -v hz="$HZ" -v t0="$t0" -v t1="$t1" '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return 1000*v; return 1e6*v }
    /^finished in/        { qps=$4 }
    /^requests:/          { done=$8; failed=$10+$12+$14 }
    /^status codes:/      { ok=$3 }
    /^time for request:/  { lat=us($6)/1000 }
    /^H2LOAD_CPU/         { pc=$2+$3 }
    END {
      wall=t1-t0; if (wall<=0) wall=1
      o=100*((b-s)/hz-pc)/wall; if (o<0) o=0
      printf "%-5s %-5s %-15s %9.0f %9.3f %7d %7.2f %6.0f %9.1f %6.0f %5s %6s\n", srv, meth, "h2load-lone",
        qps, lat, failed, done ? 100*ok/done : 0, 100*s/hz/wall, done ? 1e6*s/hz/done : 0,
        100*pc/wall, "-", sprintf("%.0f%s", o, o>15 ? "!" : "")
    }' "$out" | tee -a "$TABLE"
}

LONE=(-c 1 -q 1) LOADED=(-c 8 -T 2 -q 200)
server_rows() { # $1=server $2=pid $3=DoH port $4=foo scenario name
  local m
  for m in GET POST; do
    row "$1" $m local-lone "$2" "$3" "$D/q/local.txt" "${LONE[@]}"
    h2row "$1" $m "$2" "$3"
    row "$1" $m local-loaded "$2" "$3" "$D/q/local.txt" "${LOADED[@]}"
  done
  for m in GET POST; do row "$1" $m "$4" "$2" "$3" "$D/q/foo.txt" "${LOADED[@]}"; done
  if sel "$1/POST/chain-loaded" || sel "$1/POST/chain-lone"; then   # dnsdist -> DoH -> server, no cache
    start_bg "$WORK/logs/doh-dnsdist-$1.log" $DDPIN dnsdist --supervised --disable-syslog -C "$(dnsdist_conf "$3")"
    local ddpg=$BG i
    for i in $(seq 41); do   # up once its health check (name0 A over DoH) passed
      [[ $(kdig @127.0.0.1 -p $DD_PORT +timeout=1 +retry=0 +short name0.aws.example.internal A 2>/dev/null) == 10.2.0.1 ]] && break
      ((i < 41)) || { log "ERROR: dnsdist chain to :$3 not answering"; tail -20 "$WORK/logs/doh-dnsdist-$1.log" >&2; exit 1; }
      sleep 0.25
    done
    DD=$ddpg
    row "$1" POST chain-loaded "$2" $DD_PORT "$D/q/local.txt" -c 4 -q 100
    row "$1" POST chain-lone "$2" $DD_PORT "$D/q/local.txt" "${LONE[@]}"
    DD=""; stop_pg "$ddpg"
  fi
}
sel_server() { [[ -z $ONLY ]] || printf '%s\n' "$1"/{GET,POST}/{local-lone,h2load-lone,local-loaded,"$2",chain-loaded,chain-lone} | grep -qE "$ONLY"; }

# ------------------------------------------------------------ xdoh
if sel_server xdoh foo-fwd-cached; then
  log "starting shared BIND upstream (DoH :$UP_DOH) for xdoh's example.com rule"
  start_bg "$WORK/logs/doh-upstream-named.log" named -g -c "$WORK/named/named.conf"
  wait_doh $UP_DOH foo.example.com 172.16.0.10 "$WORK/logs/doh-upstream-named.log"
  log "starting xdoh: $BIN run -c $D/xdoh.yaml (GOMAXPROCS=${GOMAXPROCS:-unset})"
  start_bg "$WORK/logs/doh-xdoh.log" $SRVPIN "$BIN" run -c "$D/xdoh.yaml"; XPID=$BG
  wait_doh $XDOH_DOH name0.aws.example.internal 10.2.0.1 "$WORK/logs/doh-xdoh.log"
  wait_doh $XDOH_DOH foo.example.com 172.16.0.10 "$WORK/logs/doh-xdoh.log"   # also warms the cache
  server_rows xdoh "$XPID" $XDOH_DOH foo-fwd-cached
  cleanup; STARTED=()
fi

# ------------------------------------------------------------ BIND
if sel_server bind foo-auth; then
  log "starting BIND for the local zone (DoH :$BIND_DOH)"
  start_bg "$WORK/logs/doh-named.log" $SRVPIN named -g -c "$D/named/named.conf"; BPID=$BG
  wait_doh $BIND_DOH name0.aws.example.internal 10.2.0.1 "$WORK/logs/doh-named.log"
  wait_doh $BIND_DOH foo.example.com 172.16.0.10 "$WORK/logs/doh-named.log"
  server_rows bind "$BPID" $BIND_DOH foo-auth
fi

log "results: $RES (table.txt, env.txt, raw dnsperf output per row)"
log "srv% / dd% / perf%: CPU of the server / dnsdist / dnsperf over the run (100% = one core);"
log "srv_us/q: server CPU per completed query (clock-tick resolution: 1e6/$HZ us per run)"
log "other%: machine-wide user+sys CPU not used by server/dnsdist/dnsperf; '!' = disturbed row, rerun"
