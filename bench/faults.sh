#!/usr/bin/env bash
# bench/faults.sh - the fault-injection suite under load, with its table.
#
# Runs cmd/xdoh's TestFaultsUnderLoad: the xdoh binary forwards to a fault
# (a fake from forwarder/upstream/upstreamtest, or one in the test) alone and
# paired with a real BIND 9.18 over DoH, while package bench sends an open-loop
# UDP load to each rule. Each case reports sent, answered, SERVFAIL and lost;
# the test fails on a lost query or when xdoh's goroutines, descriptors or RSS
# do not come back to their baseline. Loopback only, every run bounded; the
# test stops every process it starts.
#
# Knobs (env): SECONDS_PER_CASE (default 3), QPS per rule (default 1000; two
# rules run at once per case), ONLY (a regex on case names, e.g. 'doh-(slow|flap)').
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run=TestFaultsUnderLoad
[[ -n ${ONLY:-} ]] && run="TestFaultsUnderLoad/${ONLY}"
log=$(mktemp /tmp/xdoh-faults.XXXXXX.log)
rc=0
XDOH_FAULT_SECONDS=${SECONDS_PER_CASE:-3} XDOH_FAULT_QPS=${QPS:-1000} \
  go test -count=1 -timeout 20m -run "$run" -v ./cmd/xdoh >"$log" 2>&1 || rc=$?
grep -v -e '^=== ' -e '^    --- PASS' "$log"
if ((rc == 0)); then echo "PASS: no query lost, no leak"; rm -f "$log"; else echo "FAIL (exit $rc): $log"; fi
exit "$rc"
