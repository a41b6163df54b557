#!/usr/bin/env bash
# Fleet mode (limit state in Redis) against the memory backend, with every limit feature on: a
# key with request and token windows, a concurrency cap and a budget, its workload with a window,
# a priced model, the usage database and the audit log. Upstream is keygate's embedded mock.
#
#   1. paired RPS: both gateways up at once, wrk alternating SECONDS_PER_RUN runs between them
#      (the order flips every round), 16 connections; the median RPS ratio fleet / memory;
#   2. p50 at one connection: the same, wrk -c1; the median of fleet's p50 minus memory's;
#   3. Redis round trips per request: EVALSHA calls counted by redis INFO commandstats over a
#      run: one admission per request (on the request path) and the settling scripts (one per
#      batch of requests that ended together, sent by a background task after the responses);
#      over one run of each side, the gateway's CPU per request and Redis's;
#   4. admission accuracy: two fleet instances hammered at once (one wrk each) with a key of
#      LIMIT requests per 60 s; admitted (2xx) against LIMIT.
#
# usage: benches/fleet.sh KEYGATE_BINARY
#   env: ROUNDS (default 6), SECONDS_PER_RUN (3), LIMIT (2000), GATEWAY_CPU (0), WRK_CPU (1),
#        REDIS_CPU (WRK_CPU; empty for unpinned)
# Redis runs off the gateways' core, as a fleet's Redis runs on its own host: left unpinned, it
# takes its CPU from the fleet gateway's core, and the ratio measures the host, not keygate.
# Prints a Markdown summary on stdout. Needs redis-server and wrk.
set -euo pipefail

[ $# -eq 1 ] || { sed -n '16,21p' "$0"; exit 2; }
BIN=$(realpath "$1")
ROUNDS=${ROUNDS:-6} SECONDS_PER_RUN=${SECONDS_PER_RUN:-3} LIMIT=${LIMIT:-2000}
GATEWAY_CPU=${GATEWAY_CPU:-0} WRK_CPU=${WRK_CPU:-1} REDIS_CPU=${REDIS_CPU-${WRK_CPU:-1}}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  kill -9 "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

REDIS_PORT=16390
pin_redis=()
[ -n "$REDIS_CPU" ] && pin_redis=(taskset -c "$REDIS_CPU")
"${pin_redis[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" >/dev/null 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 100); do listening "$REDIS_PORT" && break; sleep 0.05; done
redis() { redis-cli -p "$REDIS_PORT" "$@"; }

# policy NAME PORT MOCK_PORT STATE RATE: a policy directory with its key's secret.
policy() {
  local dir="$WORK/$1" port=$2 mock=$3 state=$4 rate=$5
  mkdir -p "$dir/keys.d"
  cat >"$dir/keygate.yaml" <<EOF
listen: 127.0.0.1:$port
keys_dir: keys.d
state_dir: state
audit_log: state/audit.jsonl
server: {threads: 1}
$state
mock_provider: {listen: "127.0.0.1:$mock", stream_delay: 0ms}
providers:
  mock:
    format: openai
    endpoints: [{url: "http://127.0.0.1:$mock"}]
models:
  gpt-4o-mini:
    provider: mock
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
workloads:
  app:
    models: [gpt-4o-mini]
    rate_limits: [{requests: 100000000, per: 1m}]
EOF
  (cd "$dir" && "$BIN" keys create bench --workload app --config keygate.yaml 2>/dev/null) \
    | grep -oE '^kg_[0-9A-Za-z]+' >"$dir/secret"
  cat >>"$dir/keys.d/bench.yaml" <<EOF

rate_limits: [{requests: $rate, per: 1m}, {tokens: 1000000000, per: 1m}]
max_concurrent: 64
budget: {daily_usd: 1000000, monthly_usd: 10000000}
EOF
  "$BIN" check --config "$dir/keygate.yaml" >/dev/null
}

# start NAME: the gateway of policy NAME, pinned to GATEWAY_CPU.
start() {
  local dir="$WORK/$1" port
  port=$(grep -oE '^listen: 127.0.0.1:[0-9]+' "$dir/keygate.yaml" | grep -oE '[0-9]+$')
  (cd "$dir" && exec taskset -c "$GATEWAY_CPU" "$BIN" serve --config keygate.yaml >"$dir/log" 2>&1) &
  PIDS+=($!)
  GATEWAY_PID[$1]=$!
  for _ in $(seq 200); do listening "$port" && break; sleep 0.05; done
  # Until the first request is admitted (a fleet instance connects to Redis in the background).
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
      -H "Authorization: Bearer $(cat "$dir/secret")" -H 'content-type: application/json' \
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}')" = 200 ] && break
    sleep 0.1
  done
}

# run NAME CONNECTIONS SECONDS: wrk against NAME; prints chat.lua's RESULT line.
run() {
  local dir="$WORK/$1" port
  port=$(grep -oE '^listen: 127.0.0.1:[0-9]+' "$dir/keygate.yaml" | grep -oE '[0-9]+$')
  BENCH_AUTH="Bearer $(cat "$dir/secret")" BENCH_LABEL=$1 \
    taskset -c "$WRK_CPU" wrk -t1 -c"$2" -d"$3"s --latency -s "$ROOT/benches/load/chat.lua" \
    "http://127.0.0.1:$port/v1/chat/completions" | grep '^RESULT'
}
field() { sed -E "s/.* $1=([^ ]+).*/\1/"; }
declare -A GATEWAY_PID=()
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

fleet_state="state:
  backend: redis
  redis: {url: \"redis://127.0.0.1:$REDIS_PORT/0\", prefix: bench, timeout: 50ms}
  on_error: fail_closed"
policy memory 18410 18411 "" 100000000
policy fleet 18420 18421 "$fleet_state" 100000000
start memory
start fleet

ratios=() added=()
for r in $(seq "$ROUNDS"); do
  order="memory fleet"; [ $((r % 2)) -eq 0 ] && order="fleet memory"
  declare -A rps=() p50=()
  for side in $order; do
    line=$(run "$side" 16 "$SECONDS_PER_RUN"); rps[$side]=$(field rps <<<"$line")
    line=$(run "$side" 1 "$SECONDS_PER_RUN"); p50[$side]=$(field p50_ms <<<"$line")
  done
  ratios+=("$(awk -v f="${rps[fleet]}" -v m="${rps[memory]}" 'BEGIN {printf "%.3f", f / m}')")
  added+=("$(awk -v f="${p50[fleet]}" -v m="${p50[memory]}" 'BEGIN {printf "%.3f", f - m}')")
  echo "round $r: rps memory ${rps[memory]} fleet ${rps[fleet]}; p50 ms memory ${p50[memory]} fleet ${p50[fleet]}" >&2
done

# us_per_request TICKS REQUESTS: CPU microseconds per request.
us_per_request() {
  awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}'
}
# CPU per request of the memory side over one run.
before=$(cpu_ticks "${GATEWAY_PID[memory]}")
line=$(run memory 16 "$SECONDS_PER_RUN")
memory_cpu=$(us_per_request $(($(cpu_ticks "${GATEWAY_PID[memory]}") - before)) "$(field requests <<<"$line")")

# Round trips: EVALSHA calls during a run, against the requests it completed; CPU per request of
# the fleet side and of Redis over the same run.
redis config resetstat >/dev/null
before=$(cpu_ticks "${GATEWAY_PID[fleet]}") redis_before=$(cpu_ticks "$REDIS_PID")
line=$(run fleet 16 "$SECONDS_PER_RUN")
sleep 1   # the settling scripts of the last requests, sent after their responses
requests=$(field requests <<<"$line")
fleet_cpu=$(us_per_request $(($(cpu_ticks "${GATEWAY_PID[fleet]}") - before)) "$requests")
redis_cpu=$(us_per_request $(($(cpu_ticks "$REDIS_PID") - redis_before)) "$requests")
evalsha=$(redis info commandstats | grep '^cmdstat_evalsha:' | sed -E 's/^cmdstat_evalsha:calls=([0-9]+).*/\1/')
per_request=$(awk -v c="${evalsha:-0}" -v n="$requests" 'BEGIN {printf "%.2f", c / n}')

# Accuracy: a second fleet instance, and a key of LIMIT requests per minute hammered through both.
policy acc-a 18430 18431 "${fleet_state/prefix: bench/prefix: acc}" "$LIMIT"
cp "$WORK/acc-a/keys.d/bench.yaml" "$WORK/acc-a/secret" "$WORK"/
policy acc-b 18440 18441 "${fleet_state/prefix: bench/prefix: acc}" "$LIMIT"
cp "$WORK/bench.yaml" "$WORK/acc-b/keys.d/bench.yaml"; cp "$WORK/secret" "$WORK/acc-b/secret"
start acc-a
start acc-b
# Early in a minute, so the whole run falls in one aligned window.
while [ $(( $(date +%s) % 60 )) -gt 30 ]; do sleep 1; done
# The readiness probes of start() counted; the run starts from an empty window.
redis del "acc:{app}:key:bench:r60000" >/dev/null
(run acc-a 8 10 >"$WORK/acc-a.result") &
pa=$!
(run acc-b 8 10 >"$WORK/acc-b.result") &
pb=$!
wait "$pa" "$pb"
# What Redis counted is what was admitted: wrk does not count the responses still in flight when
# it stops.
admitted=$(redis hget "acc:{app}:key:bench:r60000" c)
answered=0
for s in acc-a acc-b; do
  line=$(cat "$WORK/$s.result")
  answered=$(( answered + $(field requests <<<"$line") - $(field non2xx <<<"$line") ))
done

cat <<EOF
| figure | value |
|---|---|
| RPS, fleet / memory (paired, 16 connections, median of $ROUNDS rounds) | $(printf '%s\n' "${ratios[@]}" | median) |
| added p50 at one connection, fleet - memory (ms, median of $ROUNDS rounds) | $(printf '%s\n' "${added[@]}" | median) |
| Redis scripts per request (admission on the request path + settling off it, per batch) | $per_request |
| gateway CPU per request, memory / fleet (us, one run each) | $memory_cpu / $fleet_cpu |
| Redis CPU per request (us, the fleet run; Redis pinned to CPU ${REDIS_CPU:-none}) | $redis_cpu |
| admitted across 2 instances under load, limit $LIMIT per 60 s (2xx wrk saw complete) | $admitted ($answered) |
EOF
