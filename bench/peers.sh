#!/usr/bin/env bash
# Runs the peer benchmark (../shared/bench) with xdoh dropped in as the target,
# next to dnsdist and BIND's own ceiling in the same run. Loopback only; every
# load run is bounded by DURATION (dnsperf -l) and stops by itself.
#   bench/peers.sh                 # all rows
#   ONLY='1inflight' bench/peers.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
bin=$root/bin/xdoh
[ -x "$bin" ] || (cd "$root" && go build -o bin/xdoh ./cmd/xdoh)
bash "$shared/bench/setup.sh"
export PEERS=${PEERS:-"bind dnsdist target"} TARGET_NAME=xdoh
export TARGET_CMD="$bin run --listen \$LISTEN_ADDR:\$LISTEN_PORT --upstream \$UPSTREAM_URL --ca-file \$CA_FILE"
export TARGET_NOCACHE_CMD="$TARGET_CMD --no-cache"
exec bash "$shared/bench/run.sh"
