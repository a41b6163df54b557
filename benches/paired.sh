#!/usr/bin/env bash
# Paired A/B of two keygate set-ups (a binary and a policy directory each), for differences of a
# few percent that one-after-the-other runs cannot resolve on a shared, noisy host: both gateways
# run at once, pinned to the same core, and wrk alternates short runs between them (the order
# flips every round), so both see the same noise. Prints each round's RPS and CPU per request
# (user + sys of the gateway process) for A and B, their ratios, and the medians.
#
# usage: benches/paired.sh BINARY_A POLICY_A BINARY_B POLICY_B
#   env: ROUNDS (default 16), SECONDS_PER_RUN (4), GATEWAY_CPU (0), WRK_CPU (1)
# A policy directory is one `benches/e2e.sh` writes (OUT/policy-keys, policy-limits, policy-full:
# keygate.yaml and the load key's `secret`), with the bench mock upstream running
# (`../shared/bench/mock.sh start`). Each is copied and given its own ports.
#
# Example, limits against keys only:
#   benches/paired.sh target/release/keygate $OUT/policy-keys target/release/keygate $OUT/policy-limits
set -euo pipefail

[ $# -eq 4 ] || { sed -n '8,15p' "$0"; exit 2; }
ROUNDS=${ROUNDS:-16} SECONDS_PER_RUN=${SECONDS_PER_RUN:-4}
GATEWAY_CPU=${GATEWAY_CPU:-0} WRK_CPU=${WRK_CPU:-1}
CHAT_LUA="$(cd "$(dirname "$0")/../.." && pwd)/shared/bench/chat.lua"
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# side NAME BINARY POLICY PORT: copy the policy with its own ports, start the gateway.
side() {
  local name=$1 binary=$2 policy=$3 port=$4
  cp -r "$policy" "$WORK/$name"
  sed -i -E "s/^listen: .*/listen: 127.0.0.1:$port/; s/^admin_listen: .*/admin_listen: 127.0.0.1:$((port + 1))/" \
    "$WORK/$name/keygate.yaml"
  (cd "$WORK/$name" && exec taskset -c "$GATEWAY_CPU" "$(realpath "$binary")" serve \
    --config "$WORK/$name/keygate.yaml" >"$WORK/$name.log" 2>&1) &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$((port + 1))/readyz" && return; sleep 0.1; done
  echo "gateway $name did not become ready; its log:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# run NAME PID PORT SECONDS: prints "RPS CPU-µs-per-request".
run() {
  local name=$1 pid=$2 port=$3 seconds=$4 before after out requests
  before=$(cpu_ticks "$pid")
  out=$(BENCH_AUTH="Bearer $(cat "$WORK/$name/secret")" taskset -c "$WRK_CPU" \
    wrk -t2 -c32 -d"${seconds}s" -s "$CHAT_LUA" "http://127.0.0.1:$port/v1/chat/completions" 2>&1)
  after=$(cpu_ticks "$pid")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" -v t=$((after - before)) -v n="$requests" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f %.1f\n", r, t * 1e6 / hz / n}'
}

side a "$1" "$2" 18140
side b "$3" "$4" 18150
run a "${PIDS[0]}" 18140 2 >/dev/null  # warm both up
run b "${PIDS[1]}" 18150 2 >/dev/null
for round in $(seq "$ROUNDS"); do
  if ((round % 2)); then
    a=$(run a "${PIDS[0]}" 18140 "$SECONDS_PER_RUN"); b=$(run b "${PIDS[1]}" 18150 "$SECONDS_PER_RUN")
  else
    b=$(run b "${PIDS[1]}" 18150 "$SECONDS_PER_RUN"); a=$(run a "${PIDS[0]}" 18140 "$SECONDS_PER_RUN")
  fi
  echo "$round $a $b"
done | awk '
  { printf "round %2d  A %6d RPS %6.1f us  B %6d RPS %6.1f us  RPS B/A %.3f  CPU B/A %.3f\n",
           $1, $2, $3, $4, $5, $4 / $2, $5 / $3
    rps[NR] = $4 / $2; cpu[NR] = $5 / $3 }
  # quantile q of v[1..n] (sorted in place), interpolating between neighbours
  function quantile(v, n, q,   i, j, t, h) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    h = 1 + (n - 1) * q; i = int(h)
    return i >= n ? v[n] : v[i] + (h - i) * (v[i + 1] - v[i]) }
  END { printf "median of %d rounds: RPS B/A %.3f (IQR %.3f-%.3f), CPU per request B/A %.3f (IQR %.3f-%.3f)\n",
          NR, quantile(rps, NR, 0.5), quantile(rps, NR, 0.25), quantile(rps, NR, 0.75),
          quantile(cpu, NR, 0.5), quantile(cpu, NR, 0.25), quantile(cpu, NR, 0.75) }'
