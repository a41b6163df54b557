#!/usr/bin/env bash
# Cache misses per request at two connection counts: keygate runs under valgrind's callgrind with
# its cache simulator (a model of this host's per-core caches, so the counts do not depend on what
# else the host runs), wrk loads it with the benches' chat request at each count in turn, and
# benches/load/callgrind_misses.py prints the events per request at each count and the functions
# and memcpy call sites whose last-level misses grew most from the first count to the last.
#
# Under valgrind keygate answers a few hundred requests a second, so wrk and the mock wait on it
# at any count: the gateway is saturated, as in benches/concurrency.sh, and with C connections
# about C requests are in keygate's hands at once. Instruction and miss counts are the same for
# the same binary and load whatever the host does meanwhile; timings are not reported. The
# upstream connections opened in the measured window are, and vary from run to run.
#
# usage: benches/cachesim.sh BINARY POLICY
#   POLICY: a policy directory benches/e2e.sh wrote (OUT/policy-full: 1,000 keys, every feature)
#   env: CONNECTIONS ("32 1024"), SECONDS_PER_RUN (20), POOL (4096: the provider's idle pool, as
#        in the sweep), CACHE (valgrind's cache options; default this host's 48 KiB L1d, 32 KiB
#        L1i and 2 MiB L2, the last level a core has to itself), GATEWAY_CPU (0), WRK_CPU (1),
#        OUT (a directory for the dumps; default a temporary one, removed at the end)
# Listens on 127.0.0.1:18175-18176 (keygate) and the mock's ports (benches/load/mock.sh).
set -euo pipefail

[ $# -eq 2 ] || { sed -n '2,20p' "$0"; exit 2; }
BINARY=$(realpath "$1") POLICY=$(realpath "$2")
CONNECTIONS=${CONNECTIONS:-32 1024} SECONDS_PER_RUN=${SECONDS_PER_RUN:-20} POOL=${POOL:-4096}
CACHE=${CACHE:---D1=49152,12,64 --I1=32768,8,64 --LL=2097152,16,64}
GATEWAY_CPU=${GATEWAY_CPU:-0} WRK_CPU=${WRK_CPU:-1}
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || { echo "needs valgrind (Debian's valgrind package)" >&2; exit 2; }
PORT=18175 ADMIN=18176 # gateway_policy puts the admin API on PORT + 1
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
KEEP=${OUT:-}
[ -z "$KEEP" ] || mkdir -p "$KEEP"
DUMPS=${KEEP:-$WORK}
VALGRIND_PID=""
cleanup() {
  [ -n "$VALGRIND_PID" ] && kill "$VALGRIND_PID" 2>/dev/null
  MOCK_CPUS=$WRK_CPU BENCH_PREFIX="$WORK/mock" bash "$LOAD/mock.sh" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

MOCK_CPUS=$WRK_CPU BENCH_PREFIX="$WORK/mock" bash "$LOAD/mock.sh" start >/dev/null

gateway_policy "$POLICY" "$WORK/keygate" "$PORT" 18080 "$POOL"
# shellcheck disable=SC2086 # CACHE holds several options
(cd "$WORK/keygate" && exec taskset -c "$GATEWAY_CPU" valgrind --tool=callgrind --cache-sim=yes $CACHE \
  --callgrind-out-file="$DUMPS/callgrind.%p" "$BINARY" serve --config "$WORK/keygate/keygate.yaml" \
  >"$WORK/keygate.log" 2>&1) &
VALGRIND_PID=$!
wait_ready "$ADMIN" "$WORK/keygate.log" 120
SECRET=$(cat "$WORK/keygate/secret")

metric() { # NAME: the sum of a metric's series
  curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 ~ "^" m "({|$)" { s += $2 } END { print s + 0 }'
}
load() { # CONNECTIONS SECONDS
  BENCH_AUTH="Bearer $SECRET" taskset -c "$WRK_CPU" wrk -t1 -c"$1" -d"$2s" --timeout 60s \
    -s "$CHAT_LUA" "http://127.0.0.1:$PORT/v1/chat/completions" | grep RESULT || true
}
new_connections() { # upstream connections opened rather than taken from the pool
  curl -sf "http://127.0.0.1:$ADMIN/metrics" |
    awk '$1 ~ /^keygate_upstream_connections_total[{]/ && $1 ~ /reused="false"/ { s += $2 } END { print s + 0 }'
}
drained() { # waits until keygate has no request in flight, wrk's last ones answered or dropped
  local _
  for _ in $(seq 600); do
    # /readyz, not /metrics: a scrape of 1,000 keys' series would land in the measured window.
    curl -s "http://127.0.0.1:$ADMIN/readyz" | grep -q '"in_flight":0[,}]' && return
    sleep 0.1
  done
  echo "keygate still had requests in flight after 60 s" >&2; exit 1
}

dumps=()
for conns in $CONNECTIONS; do
  # Fills the pool and the runtime's queue to this count's steady state; not measured.
  load "$conns" 5 >/dev/null
  drained
  # Counted outside the measured window, with nothing in flight on either side of it.
  before=$(metric keygate_request_duration_seconds_count) opened_before=$(new_connections)
  callgrind_control -z "$VALGRIND_PID" >/dev/null
  echo "$conns connections: $(load "$conns" "$SECONDS_PER_RUN")" >&2
  drained
  callgrind_control -d "c$conns" "$VALGRIND_PID" >/dev/null
  requests=$(($(metric keygate_request_duration_seconds_count) - before))
  # A connection opened in the window (the pool growing past its peak in the warm-up) costs
  # about 130 L2 misses at 1,024 connections: compare builds at similar counts.
  echo "$conns connections: $requests requests, $(($(new_connections) - opened_before)) new upstream connections" >&2
  dump=$(ls -t "$DUMPS"/callgrind.* | head -1)
  dumps+=("$dump" "$requests")
done
python3 "$LOAD/callgrind_misses.py" "${dumps[0]}" "${dumps[1]}" "${dumps[-2]}" "${dumps[-1]}"
