#!/usr/bin/env bash
# What translating chat completions to Anthropic's Messages API costs: the same OpenAI-SDK-shaped
# chat request (benches/load/chat.lua) to a model of a `format: openai` provider (passthrough)
# and to one of a `format: anthropic` provider (translated both ways), each against the bench
# mock's answer in its own API (benches/load/mock-nginx.conf: /v1/chat/completions and
# /v1/messages carry the same text and usage). Both policies account, audit and hold a budget.
#
# usage: benches/translate.sh KEYGATE_BINARY
#   env: ROUNDS (default 12), SECONDS_PER_RUN (4), TTFB_REQUESTS (1500), and paired.sh's
# Prints paired.sh's rounds and medians for JSON and for SSE (RPS translated/passthrough, CPU per
# request translated/passthrough), then the time to the first SSE `data:` line of each from a raw
# socket (benches/ttfb_probe.py, requests alternating), with the median of paired differences,
# and the write syscalls per request of each (strace).
set -euo pipefail

[ $# -eq 1 ] || { sed -n '8,13p' "$0"; exit 2; }
BIN=$(realpath "$1")
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  kill -9 "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  "$LOAD/mock.sh" stop >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# policy NAME FORMAT MOCK_PORT: a policy directory whose model `bench` is served by a provider of
# FORMAT at the mock's MOCK_PORT, with its load key's secret.
policy() {
  local dir="$WORK/$1" format=$2 mock=$3
  mkdir -p "$dir/keys.d"
  cat >"$dir/keygate.yaml" <<EOF
listen: 127.0.0.1:18160
admin_listen: 127.0.0.1:18161
keys_dir: keys.d
state_dir: state
audit_log: state/audit.jsonl
providers:
  mock:
    format: $format
    api_key: sk-bench-upstream
    endpoints:
      - {url: "http://127.0.0.1:$mock"}
models:
  bench:
    provider: mock
    upstream_model: $([ "$format" = anthropic ] && echo claude-sonnet-4-5 || echo gpt-4o-mini)
    price: {input_per_mtok: 3, output_per_mtok: 15}
    max_output_tokens: 16384
workloads:
  bench:
    models: [bench]
    budget: {monthly_usd: 10000000}
EOF
  "$BIN" keys create bench-key --workload bench --owner bench --config "$dir/keygate.yaml" \
    2>/dev/null >"$dir/secret"
  "$BIN" check --config "$dir/keygate.yaml" >/dev/null
}

"$LOAD/mock.sh" start >/dev/null
policy passthrough-json openai 18080
policy translated-json anthropic 18080
policy passthrough-sse openai 18081
policy translated-sse anthropic 18081

# Both sides send what the OpenAI SDK sends for a chat: chat.lua's request without `metadata`,
# which the Messages API has no place for (a translated request refuses it).
export BENCH_MODEL=bench BENCH_METADATA=0
echo "## JSON: passthrough (A) against translated (B)"
ROUNDS=${ROUNDS:-12} "$HERE/paired.sh" "$BIN" "$WORK/passthrough-json" "$BIN" "$WORK/translated-json"
echo "## SSE: passthrough (A) against translated (B)"
BENCH_STREAM=1 ROUNDS=${ROUNDS:-12} "$HERE/paired.sh" "$BIN" "$WORK/passthrough-sse" "$BIN" "$WORK/translated-sse"

# serve NAME PORT: the gateway of policy NAME on PORT, pinned like paired.sh's sides.
serve() {
  local dir="$WORK/$1" port=$2
  sed -i -E "s/^listen: .*/listen: 127.0.0.1:$port/; s/^admin_listen: .*/admin_listen: 127.0.0.1:$((port + 1))/" \
    "$dir/keygate.yaml"
  for _ in $(seq 300); do listening "$port" || break; sleep 0.1; done
  (cd "$dir" && exec taskset -c "${GATEWAY_CPU:-0}" "$BIN" serve --config keygate.yaml >"$WORK/$1.log" 2>&1) &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$((port + 1))/readyz" && return; sleep 0.1; done
  echo "gateway $1 did not become ready" >&2
  exit 1
}
serve passthrough-sse 18160
serve translated-sse 18170
echo "## SSE time to first byte (ms): passthrough against translated"
echo "| system | first data: p50 | whole stream p50 | requests |"
echo "|---|---|---|---|"
taskset -c "${WRK_CPU:-1}" python3 "$HERE/ttfb_probe.py" "${TTFB_REQUESTS:-1500}" \
  passthrough 127.0.0.1:18160 bench "Bearer $(cat "$WORK/passthrough-sse/secret")" \
  translated 127.0.0.1:18170 bench "Bearer $(cat "$WORK/translated-sse/secret")"

# writes PORT PID BENCH_STREAM: write syscalls per request of the gateway PID serving on PORT,
# counted by strace over two seconds of keep-alive load (strace slows the gateway; counts hold).
writes() {
  local port=$1 pid=$2 out="$WORK/strace.$1"
  strace -f -c -e trace=write,writev,sendto,sendmsg -p "$pid" -o "$out" 2>/dev/null &
  local tracer=$!
  sleep 0.5
  local requests
  requests=$(BENCH_STREAM=$3 BENCH_AUTH="Bearer $4" taskset -c "${WRK_CPU:-1}" \
    wrk -t1 -c4 -d2s -s "$CHAT_LUA" "http://127.0.0.1:$port/v1/chat/completions" |
    sed -n 's/.*RESULT.* requests=\([0-9]*\).*/\1/p')
  kill -INT "$tracer"
  wait "$tracer" 2>/dev/null || true
  awk -v n="$requests" '$NF ~ /^(write|writev|sendto|sendmsg)$/ {calls += $4}
    END {printf "%.2f", calls / n}' "$out"
}
serve passthrough-json 18180
serve translated-json 18190
echo
echo "## write syscalls per request (strace), upstream and client sides together"
echo "| | passthrough | translated |"
echo "|---|---|---|"
printf '| JSON | %s | %s |\n' \
  "$(writes 18180 "${PIDS[-2]}" 0 "$(cat "$WORK/passthrough-json/secret")")" \
  "$(writes 18190 "${PIDS[-1]}" 0 "$(cat "$WORK/translated-json/secret")")"
printf '| SSE | %s | %s |\n' \
  "$(writes 18160 "${PIDS[-4]}" 1 "$(cat "$WORK/passthrough-sse/secret")")" \
  "$(writes 18170 "${PIDS[-3]}" 1 "$(cat "$WORK/translated-sse/secret")")"
