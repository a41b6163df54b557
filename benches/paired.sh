#!/usr/bin/env bash
# Paired A/B of two keygate set-ups (a binary and a policy directory each), for differences of a
# few percent that one-after-the-other runs cannot resolve on a shared, noisy host: both gateways
# run at once, pinned to the same core, and wrk alternates short runs between them (the order
# flips every round), so both see the same noise. Prints each round's RPS and CPU per request
# (user + sys of the gateway process) for A and B, their ratios, and the medians.
#
# usage: benches/paired.sh BINARY_A POLICY_A BINARY_B POLICY_B
#   env: ROUNDS (default 16), SECONDS_PER_RUN (4), GATEWAY_CPU (0), WRK_CPU (1),
#        CONNECTIONS (32: wrk's connections to a side), CONCURRENT (0; 1: load both sides at the
#        same time instead of taking turns)
# With CONCURRENT=1 the two gateways share the pinned core for the whole run, each loaded by its
# own wrk (half the connections), so the scheduler splits the core between them and the RPS ratio is
# the inverse ratio of their CPU per request; noise from the host then strikes both sides at
# the same instant, and rounds scatter far less than when the sides take turns.
# A policy directory is one `benches/e2e.sh` writes (OUT/policy-keys, policy-limits, policy-full:
# keygate.yaml and the load key's `secret`), with the bench mock upstream running on WRK_CPU
# (`MOCK_CPUS=1 benches/load/mock.sh start`). Each is copied and given its own ports.
# Either side may instead be `nginx -`, the bench's nginx reverse proxy (restarted pinned to
# GATEWAY_CPU; its CPU is the master's and workers'), or `PATH floor`, Pingora's floor
# (examples/pingora_baseline.rs built at PATH).
#
# Examples, limits against keys only, and keygate against nginx:
#   benches/paired.sh target/release/keygate $OUT/policy-keys target/release/keygate $OUT/policy-limits
#   benches/paired.sh nginx - target/release/keygate $OUT/policy-full
set -euo pipefail

[ $# -eq 4 ] || { sed -n '8,24p' "$0"; exit 2; }
ROUNDS=${ROUNDS:-16} SECONDS_PER_RUN=${SECONDS_PER_RUN:-4} CONNECTIONS=${CONNECTIONS:-32}
GATEWAY_CPU=${GATEWAY_CPU:-0} WRK_CPU=${WRK_CPU:-1}
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
PIDS=()
stop_sides() {
  # On SIGTERM Pingora drains for a grace period (the floor for minutes); nothing here needs draining.
  kill -9 "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
}
trap 'stop_sides; rm -rf "$WORK"' EXIT

# side NAME BINARY POLICY PORT: copy the policy with its own ports, start the gateway; sets
# PORT_<NAME> and PID_<NAME> (the process whose tree's CPU is counted).
side() {
  local name=$1 binary=$2 policy=$3 port=$4
  mkdir -p "$WORK/$name"
  if [ "$binary" = nginx ]; then
    echo none >"$WORK/$name/secret"
    "$LOAD/mock.sh" stop-proxy >/dev/null
    PROXY_CPUS=$GATEWAY_CPU "$LOAD/mock.sh" start-proxy >/dev/null
    trap '"$LOAD/mock.sh" stop-proxy >/dev/null; stop_sides; rm -rf "$WORK"' EXIT
    printf -v "PORT_$name" 18090
    printf -v "PID_$name" %s "$("$LOAD/mock.sh" pid proxy)"
    return
  fi
  printf -v "PORT_$name" %s "$port"
  binary=$(realpath "$binary")  # the gateway starts in its policy's directory
  # keygate keeps serving for its drain delay after SIGTERM: one from the run before may still
  # hold this port, and a side started now would fail to bind while wrk measured the old one.
  for _ in $(seq 300); do listening "$port" || break; sleep 0.1; done
  if listening "$port"; then echo "port $port is still taken" >&2; exit 1; fi
  if [ "$policy" = floor ]; then
    echo none >"$WORK/$name/secret"
    taskset -c "$GATEWAY_CPU" "$binary" "127.0.0.1:$port" 127.0.0.1:18080 >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" %s $!
    for _ in $(seq 50); do listening "$port" && return; sleep 0.1; done
    echo "the floor did not start; its log:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
  fi
  rmdir "$WORK/$name"
  cp -r "$policy" "$WORK/$name"
  sed -i -E "s/^listen: .*/listen: 127.0.0.1:$port/; s/^admin_listen: .*/admin_listen: 127.0.0.1:$((port + 1))/" \
    "$WORK/$name/keygate.yaml"
  (cd "$WORK/$name" && exec taskset -c "$GATEWAY_CPU" "$binary" serve \
    --config "$WORK/$name/keygate.yaml" >"$WORK/$name.log" 2>&1) &
  PIDS+=($!)
  printf -v "PID_$name" %s $!
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$((port + 1))/readyz" && return; sleep 0.1; done
  echo "gateway $name did not become ready; its log:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}

# run NAME PID PORT SECONDS: prints "RPS CPU-µs-per-request".
run() {
  local name=$1 pid=$2 port=$3 seconds=$4 before after out requests
  before=$(cpu_ticks "$pid")
  out=$(BENCH_AUTH="Bearer $(cat "$WORK/$name/secret")" taskset -c "$WRK_CPU" \
    wrk -t2 -c"$CONNECTIONS" -d"${seconds}s" -s "$CHAT_LUA" "http://127.0.0.1:$port/v1/chat/completions" 2>&1)
  after=$(cpu_ticks "$pid")
  require_2xx "side $name" "$out"
  figures "$out" $((after - before))
  echo
}

# figures WRK_OUTPUT TICKS: "RPS CPU-µs-per-request" of one wrk run that cost the side TICKS.
figures() {
  awk -v r="$(awk '/Requests\/sec/ {print $2}' <<<"$1")" -v t="$2" \
    -v n="$(awk '/requests in/ {print $1}' <<<"$1")" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.0f %.1f", r, t * 1e6 / hz / n}'
}

# run_both SECONDS: both sides loaded at once, each by its own wrk with half the connections;
# prints "RPS_A CPU_A RPS_B CPU_B".
run_both() {
  local seconds=$1 name before_a before_b after_a after_b
  before_a=$(cpu_ticks "$PID_a"); before_b=$(cpu_ticks "$PID_b")
  for name in a b; do
    local port_var=PORT_$name
    BENCH_AUTH="Bearer $(cat "$WORK/$name/secret")" taskset -c "$WRK_CPU" \
      wrk -t1 -c$((CONNECTIONS / 2)) -d"${seconds}s" -s "$CHAT_LUA" "http://127.0.0.1:${!port_var}/v1/chat/completions" \
      >"$WORK/wrk-$name.txt" 2>&1 &
  done
  wait $(jobs -p)
  after_a=$(cpu_ticks "$PID_a"); after_b=$(cpu_ticks "$PID_b")
  local out_a out_b
  out_a=$(cat "$WORK/wrk-a.txt"); out_b=$(cat "$WORK/wrk-b.txt")
  require_2xx "side a" "$out_a"
  require_2xx "side b" "$out_b"
  echo "$(figures "$out_a" $((after_a - before_a))) $(figures "$out_b" $((after_b - before_b)))"
}

side a "$1" "$2" 18140
side b "$3" "$4" 18150
run a "$PID_a" "$PORT_a" 2 >/dev/null  # warm both up
run b "$PID_b" "$PORT_b" 2 >/dev/null
for round in $(seq "$ROUNDS"); do
  if [ "${CONCURRENT:-0}" = 1 ]; then
    both=$(run_both "$SECONDS_PER_RUN")
    echo "$round $both"
    continue
  fi
  if ((round % 2)); then
    a=$(run a "$PID_a" "$PORT_a" "$SECONDS_PER_RUN"); b=$(run b "$PID_b" "$PORT_b" "$SECONDS_PER_RUN")
  else
    b=$(run b "$PID_b" "$PORT_b" "$SECONDS_PER_RUN"); a=$(run a "$PID_a" "$PORT_a" "$SECONDS_PER_RUN")
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
