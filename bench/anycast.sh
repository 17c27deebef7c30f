#!/usr/bin/env bash
# bench/anycast.sh - scale-out behind ECMP and anycast, with its table.
#
# Runs cmd/xdoh's TestAnycastECMP (root): network namespaces of the test's
# own (a client, a router, two instances; 10.53.0.0/16 exists only in them).
# The router runs BIRD 2 with deploy/bird/router.conf (ECMP, merge paths);
# each instance runs xdoh (its own nsid), BIRD with deploy/bird/instance.conf
# and deploy/bird/xdoh-anycast-check, announcing 10.53.53.53/32. 32 client
# flows (source ports) send 100 q/s each with the NSID option for about 7 s;
# after 1.5 s one instance is killed with SIGKILL, 2 s later started again;
# once it is back, the other is drained by stopping its check (SIGTERM).
# The table: per instance, the flows it had before the kill, the queries it
# answered before the kill, after it, after the restart and after the drain,
# and the queries its flows lost; then the loss window. The test fails when
# a query is lost outside the kill-to-withdrawal span or by a flow of the
# survivor, or when the window exceeds 1.5 s.
#
# Knobs (env): RUNS (default 1): the scenario this many times, a table each;
# CHECK_INTERVAL, CHECK_TIMEOUT, CHECK_FALL, CHECK_RISE reach the check
# (deploy/bird/xdoh-anycast-check; unset, its defaults).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log=$(mktemp /tmp/xdoh-anycast.XXXXXX.log)
rc=0
go test -count="${RUNS:-1}" -timeout 10m -run '^TestAnycastECMP$' -v ./cmd/xdoh >"$log" 2>&1 || rc=$?
# The test's log lines without their file:line prefix and indentation.
sed -n -e 's/^    anycast_e2e_test.go:[0-9]*: *$//p' -e 's/^        //p' -e '/^--- /p' -e '/SKIP\|FAIL\|panic/p' "$log" | grep -v '^$' || true
if ((rc == 0)); then echo "PASS"; rm -f "$log"; else echo "FAIL (exit $rc): $log"; fi
exit "$rc"
