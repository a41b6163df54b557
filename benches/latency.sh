#!/usr/bin/env bash
# Added latency of one proxy hop at one connection, in two CPU layouts, for the nginx proxy,
# Pingora's floor and keygate, each against a direct run to the mock in the same round.
#
# usage: benches/latency.sh KEYGATE_BINARY POLICY FLOOR_BINARY
#   env: ROUNDS (default 5), SECONDS_PER_RUN (4), LAYOUTS ("apart shared")
# POLICY is a directory `benches/e2e.sh` writes (OUT/policy-full: keygate.yaml and the load
# key's `secret`); FLOOR_BINARY is examples/pingora_baseline.rs built in release.
#
# The layouts:
#   apart   the proxy on CPU 0, wrk and the mock on CPU 1 (run-peers.sh's "pinned"). Every
#           request crosses between the CPUs four times; direct crosses none.
#   shared  everything on CPU 1. Nothing crosses, so a hop costs what its code and the kernel's
#           loopback path cost, and added latency is close to the proxy's CPU per request.
# In `apart`, direct is also measured from wrk on CPU 0 (two crossings, no proxy), which prices
# a crossing. On a virtual machine whose idle vCPUs halt at once (guest halt polling off),
# that price is tens of microseconds, so `apart` measures the host as much as the proxy, and
# `shared` tells the two apart.
# Each round runs the systems in an order that rotates, wrk -t1 -c1 for SECONDS_PER_RUN each; a
# row's added p50/p99 is the median over rounds of the system's figure minus direct's in that
# round. CPU per request is user + system time of the proxy's processes.
set -euo pipefail

[ $# -eq 3 ] || { sed -n '5,8p' "$0"; exit 2; }
BIN=$(realpath "$1") POLICY=$2 FLOOR_BIN=$(realpath "$3")
ROUNDS=${ROUNDS:-5} SECONDS_PER_RUN=${SECONDS_PER_RUN:-4} LAYOUTS=${LAYOUTS:-apart shared}
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d)
PIDS=()
stop_all() {
  # Pingora drains for a grace period on SIGTERM; nothing here needs draining.
  kill -9 "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  "$LOAD/mock.sh" stop-proxy >/dev/null
  "$LOAD/mock.sh" stop >/dev/null
}
trap 'stop_all; rm -rf "$WORK"' EXIT

declare -A PORT PID
SECRET=$(cat "$POLICY/secret")

# start_layout PROXY_CPU MOCK_CPU: the mock, nginx, the floor and keygate, pinned.
start_layout() {
  local proxy_cpu=$1 mock_cpu=$2
  stop_all
  MOCK_CPUS=$mock_cpu "$LOAD/mock.sh" start >/dev/null
  PROXY_CPUS=$proxy_cpu "$LOAD/mock.sh" start-proxy >/dev/null
  PORT[direct]=18080 PORT[across]=18080 PORT[nginx]=18090 PORT[floor]=18170 PORT[keygate]=18160
  PID[direct]="" PID[across]="" PID[nginx]=$("$LOAD/mock.sh" pid proxy)
  taskset -c "$proxy_cpu" "$FLOOR_BIN" 127.0.0.1:18170 127.0.0.1:18080 >"$WORK/floor.log" 2>&1 &
  PIDS+=($!) PID[floor]=$!
  for _ in $(seq 50); do listening 18170 && break; sleep 0.1; done
  listening 18170 || { echo "the floor did not start; its log:" >&2; cat "$WORK/floor.log" >&2; exit 1; }
  rm -rf "$WORK/keygate"
  cp -r "$POLICY" "$WORK/keygate"
  sed -i -E "s/^listen: .*/listen: 127.0.0.1:18160/; s/^admin_listen: .*/admin_listen: 127.0.0.1:18161/" \
    "$WORK/keygate/keygate.yaml"
  (cd "$WORK/keygate" && exec taskset -c "$proxy_cpu" "$BIN" serve --config "$WORK/keygate/keygate.yaml" \
    >"$WORK/keygate.log" 2>&1) &
  PIDS+=($!) PID[keygate]=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18161/readyz && return; sleep 0.1; done
  echo "keygate did not become ready; its log:" >&2
  cat "$WORK/keygate.log" >&2
  exit 1
}

# measure SYSTEM SECONDS: prints "p50_us p99_us cpu_us_per_request"; wrk runs on CPU 1.
measure() {
  local system=$1 seconds=$2 wrk_cpu=1 before after out
  [ "$system" = across ] && wrk_cpu=0
  before=$(cpu_ticks "${PID[$system]}")
  out=$(BENCH_AUTH="Bearer $SECRET" taskset -c "$wrk_cpu" wrk -t1 -c1 -d"${seconds}s" --latency \
    -s "$CHAT_LUA" "http://127.0.0.1:${PORT[$system]}/v1/chat/completions" 2>&1)
  after=$(cpu_ticks "${PID[$system]}")
  require_2xx "$system" "$out"
  awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    # wrk prints latencies as 123.00us, 1.23ms or 1.23s
    function us(v) { return v ~ /us$/ ? v + 0 : v ~ /ms$/ ? v * 1000 : v * 1e6 }
    / 50%/ { p50 = us($2) } / 99%/ { p99 = us($2) } /requests in/ { n = $1 }
    END { printf "%.0f %.0f %.1f\n", p50, p99, ticks * 1e6 / hz / n }' <<<"$out"
}

for layout in $LAYOUTS; do
  case $layout in
    # `across` is direct too, but from wrk on CPU 0: two crossings without any proxy.
    apart) start_layout 0 1; SYSTEMS=(direct across nginx floor keygate) ;;
    shared) start_layout 1 1; SYSTEMS=(direct nginx floor keygate) ;;
    *) echo "unknown layout $layout" >&2; exit 2 ;;
  esac
  for system in "${SYSTEMS[@]}"; do measure "$system" 1 >/dev/null; done  # warm up
  for round in $(seq "$ROUNDS"); do
    for i in "${!SYSTEMS[@]}"; do
      system=${SYSTEMS[$(((i + round) % ${#SYSTEMS[@]}))]}
      figures=$(measure "$system" "$SECONDS_PER_RUN")  # an assignment, so that a failure stops the run
      echo "$layout $round $system $figures" >>"$WORK/rounds"
      tail -n 1 "$WORK/rounds" |
        awk '{ printf "%-6s round %2d  %-7s p50 %5d us  p99 %6d us  CPU %5.1f us/req\n", $1, $2, $3, $4, $5, $6 }' >&2
    done
  done
done

awk '
  { p50[$1, $2, $3] = $4; p99[$1, $2, $3] = $5; cpu[$1, $2, $3] = $6; rounds[$1] = $2
    if (!seen[$1]++) layouts[++nl] = $1 }
  function median(v, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
  END {
    print "| layout | system | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU ms/req |"
    print "|---|---|---|---|---|---|---|"
    ns = split("direct across nginx floor keygate", systems, " ")
    for (l = 1; l <= nl; l++) for (s = 1; s <= ns; s++) {
      layout = layouts[l]; name = systems[s]; n = rounds[layout]
      if (!((layout, 1, name) in p50)) continue
      for (r = 1; r <= n; r++) {
        a[r] = p50[layout, r, name]; b[r] = p99[layout, r, name]; c[r] = cpu[layout, r, name]
        da[r] = a[r] - p50[layout, r, "direct"]; db[r] = b[r] - p99[layout, r, "direct"]
      }
      if (name == "direct")
        printf "| %s | %s | %.3f | %.3f | - | - | - |\n", layout, name, median(a, n) / 1000, median(b, n) / 1000
      else if (name == "across")
        printf "| %s | direct, wrk on CPU 0 | %.3f | %.3f | %+.3f | %+.3f | - |\n", layout, median(a, n) / 1000,
          median(b, n) / 1000, median(da, n) / 1000, median(db, n) / 1000
      else
        printf "| %s | %s | %.3f | %.3f | %+.3f | %+.3f | %.4f |\n", layout, name, median(a, n) / 1000,
          median(b, n) / 1000, median(da, n) / 1000, median(db, n) / 1000, median(c, n) / 1000
    }
  }' "$WORK/rounds"
