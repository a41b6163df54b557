#!/usr/bin/env bash
# benches/pgo.sh: a profile-guided release build of keygate.
#
# Builds keygate instrumented, serves the load benches' workloads through it, then builds it again
# with the profile that run recorded, so the compiler lays out and inlines the request path for how
# it actually runs. The training covers every path a gateway serves in bulk, each for about the
# same time: OpenAI chat as JSON and as SSE, Anthropic's Messages API (JSON and events), OpenAI
# requests to a Claude model (translated both ways), a key with guardrails, embeddings, and
# refused requests (an unknown key, a model the key may not use), all with limits, budgets, the
# usage database and the audit log on. A path the training never runs is optimized as cold, so a
# workload left out of it may run slower than in a plain release build.
#
# The training gateway runs one data-plane thread (`server: {threads: 1}`). Trained with work
# stealing, the profile marks tokio's work-stealing worker loop hot with every request's task
# inlined into it; with more than one response path in the profile, rustc's fat-LTO build of that
# one function did not finish in 25 minutes. The built binary still steals work on a host with
# several cores; docs/performance.md has both runtimes measured.
#
# usage: benches/pgo.sh   env: PGO_SECONDS (wrk seconds per workload and connection count, default 3)
#                              CARGO_TARGET_DIR (default target/)
# Prints the optimized binary's path on its last line: $CARGO_TARGET_DIR/pgo/keygate.
# Needs what the load benches need (benches/README.md: nginx with its echo module, wrk) and an
# llvm-profdata of rustc's LLVM: rustup's llvm-tools component, or Debian's llvm-N, which it
# installs when neither is there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
SECONDS_PER_LOAD="${PGO_SECONDS:-3}"
HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
DATA="$TARGET/pgo/profiles"
WORK=$(mktemp -d)
PIDS=()
MOCK_STARTED=0

cleanup() {
  kill -9 "${PIDS[@]}" 2>/dev/null || true
  if [ "$MOCK_STARTED" = 1 ]; then "$LOAD/mock.sh" stop >/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A raw profile is read only by the llvm-profdata of the LLVM that wrote it.
profdata() {
  local tool sysroot_tool
  sysroot_tool="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
  for tool in "$sysroot_tool" "llvm-profdata-$LLVM_MAJOR" llvm-profdata; do
    if command -v "$tool" >/dev/null &&
      "$tool" --version | grep -q "LLVM version $LLVM_MAJOR\."; then
      echo "$tool"
      return
    fi
  done
  if command -v rustup >/dev/null && rustup component add llvm-tools >&2; then
    echo "$sysroot_tool"
    return
  fi
  echo "installing llvm-$LLVM_MAJOR for llvm-profdata (rustc uses LLVM $LLVM_MAJOR)" >&2
  apt-get update -qq >&2 && apt-get install -y -qq "llvm-$LLVM_MAJOR" >/dev/null
  echo "llvm-profdata-$LLVM_MAJOR"
}
PROFDATA=$(profdata)

command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake >/dev/null; }
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx wrk >/dev/null
  service nginx stop >/dev/null 2>&1 || true
fi

# --target keeps the flags off build scripts and proc macros, which run at build time only.
build() { # target-dir rustflags
  RUSTFLAGS="$2" CARGO_TARGET_DIR="$1" cargo build --release --locked -q --bin keygate \
    --target "$HOST" >&2
}

echo "1/3 building instrumented" >&2
rm -rf "$DATA"
mkdir -p "$DATA"
build "$TARGET/pgo/generate" "-Cprofile-generate=$DATA"
BIN="$TARGET/pgo/generate/$HOST/release/keygate"
export LLVM_PROFILE_FILE="$DATA/keygate-%p-%m.profraw"

# ---- the training policy ---------------------------------------------------------------------
# Each provider sits on the bench mock: :18080 answers JSON, :18081 the same answers as events.
POLICY="$WORK/policy"
mkdir -p "$POLICY/keys.d"
cat >"$POLICY/keygate.yaml" <<EOF
listen: 127.0.0.1:18170
admin_listen: 127.0.0.1:18171
keys_dir: keys.d
state_dir: state
audit_log: state/audit.jsonl
server: {threads: 1, drain_delay: 100ms, grace_period: 1s}
providers:
  openai:
    format: openai
    api_key: sk-training-upstream
    endpoints:
      - {url: "http://127.0.0.1:18080"}
  openai-sse:
    format: openai
    api_key: sk-training-upstream
    endpoints:
      - {url: "http://127.0.0.1:18081"}
  anthropic:
    format: anthropic
    api_key: sk-training-upstream
    endpoints:
      - {url: "http://127.0.0.1:18080"}
  anthropic-sse:
    format: anthropic
    api_key: sk-training-upstream
    endpoints:
      - {url: "http://127.0.0.1:18081"}
models:
  gpt-4o-mini: {provider: openai, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
  gpt-4o-mini-sse:
    provider: openai-sse
    upstream_model: gpt-4o-mini
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
  claude: {provider: anthropic, upstream_model: claude-sonnet-4-5, price: {input_per_mtok: 3, output_per_mtok: 15}}
  claude-sse:
    provider: anthropic-sse
    upstream_model: claude-sonnet-4-5
    price: {input_per_mtok: 3, output_per_mtok: 15}
  text-embedding-3-small: {provider: openai, price: {input_per_mtok: 0.02, output_per_mtok: 0}}
workloads:
  train:
    models: [gpt-4o-mini, gpt-4o-mini-sse, claude, claude-sse, text-embedding-3-small]
    rate_limits: [{requests: 100000000, per: 1m}]
    budget: {monthly_usd: 10000000}
  guarded:
    models: [gpt-4o-mini, gpt-4o-mini-sse]
    guardrails: [pii-basic, no-secrets, injection]
  narrow:
    models: [gpt-4o-mini]
$(sed -n '/^guardrails:/,/^guardrail_defaults:/p' conf/keygate.yaml | grep -v '^guardrail_defaults:')
EOF
key() { # name workload
  "$BIN" keys create "$1" --workload "$2" --owner training --config "$POLICY/keygate.yaml" \
    2>/dev/null >"$POLICY/$1.secret"
  cat >>"$POLICY/keys.d/$1.yaml" <<'EOF'
rate_limits: [{requests: 100000000, per: 1m}, {tokens: 100000000000, per: 1m}]
max_concurrent: 100000
allowed_ips: [127.0.0.0/8, "::1/128"]
budget: {daily_usd: 1000000, monthly_usd: 10000000, alert_at: [0.5, 0.8]}
EOF
}
key train train
key guarded guarded
key narrow narrow
"$BIN" check --config "$POLICY/keygate.yaml" >/dev/null

if ! curl -sf -o /dev/null http://127.0.0.1:18080/health; then
  "$LOAD/mock.sh" start >/dev/null
  MOCK_STARTED=1
fi

echo "2/3 training" >&2
ulimit -n "$(ulimit -Hn)"
(cd "$POLICY" && exec "$BIN" serve --config "$POLICY/keygate.yaml" >"$WORK/keygate.log" 2>&1) &
GATEWAY=$!
PIDS+=("$GATEWAY")
wait_ready 18171 "$WORK/keygate.log" 60

URL=http://127.0.0.1:18170
# load KEY PATH CONNECTIONS OUTCOME [ENV...]: one workload through chat.lua. OUTCOME is `served` or
# `refused`; a workload whose answers are not all that would train the wrong path, so it stops
# the build.
load() {
  local secret path=$2 connections=$3 outcome=$4 result requests refused
  secret=$(cat "$POLICY/$1.secret")
  shift 4
  result=$(env BENCH_AUTH="Bearer $secret" "$@" wrk -t1 -c"$connections" -d"${SECONDS_PER_LOAD}s" \
    -s "$CHAT_LUA" "$URL$path" | grep -E '^RESULT')
  echo "$result" >&2
  requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$result")
  refused=$(sed -n 's/.* non2xx=\([0-9]*\).*/\1/p' <<<"$result")
  if [ "$outcome" = served ] && [ "$refused" -eq 0 ] && [ "$requests" -gt 0 ]; then return; fi
  if [ "$outcome" = refused ] && [ "$refused" -eq "$requests" ]; then return; fi
  echo "training workload not $outcome as expected; keygate's log:" >&2
  tail -n 20 "$WORK/keygate.log" >&2
  exit 1
}
for connections in 32 512; do
  load train /v1/chat/completions "$connections" served BENCH_LABEL=openai-json
  load train /v1/chat/completions "$connections" served BENCH_LABEL=openai-sse BENCH_MODEL=gpt-4o-mini-sse BENCH_STREAM=1
  load train /v1/messages "$connections" served BENCH_LABEL=anthropic-json BENCH_KIND=messages BENCH_MODEL=claude
  load train /v1/messages "$connections" served BENCH_LABEL=anthropic-sse BENCH_KIND=messages BENCH_MODEL=claude-sse BENCH_STREAM=1
  load train /v1/chat/completions "$connections" served BENCH_LABEL=translated-json BENCH_MODEL=claude BENCH_METADATA=0
  load train /v1/chat/completions "$connections" served BENCH_LABEL=translated-sse BENCH_MODEL=claude-sse BENCH_STREAM=1 BENCH_METADATA=0
done
load guarded /v1/chat/completions 32 served BENCH_LABEL=guardrails
load guarded /v1/chat/completions 32 served BENCH_LABEL=guardrails-sse BENCH_MODEL=gpt-4o-mini-sse BENCH_STREAM=1
load train /v1/embeddings 32 served BENCH_LABEL=embeddings BENCH_KIND=embeddings
load narrow /v1/chat/completions 32 refused BENCH_LABEL=model-refused BENCH_MODEL=claude
echo "kg_trainingtrainingtrainingtrainingtrai" >"$POLICY/unknown.secret"
load unknown /v1/chat/completions 32 refused BENCH_LABEL=key-refused
curl -sf -o /dev/null http://127.0.0.1:18171/metrics

# The profile is written when the process exits, which it does once it has drained.
kill -TERM "$GATEWAY"
for _ in $(seq 600); do kill -0 "$GATEWAY" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$GATEWAY" 2>/dev/null; then echo "keygate did not exit after SIGTERM" >&2; exit 1; fi
ls "$DATA"/keygate-*.profraw >/dev/null

echo "3/3 building with the profile" >&2
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw
# cargo tracks the flags, not the profile they name: an earlier build would pass for this one.
rm -rf "$TARGET/pgo/use"
build "$TARGET/pgo/use" "-Cprofile-use=$DATA/merged.profdata"
cp "$TARGET/pgo/use/$HOST/release/keygate" "$TARGET/pgo/keygate"
echo "$TARGET/pgo/keygate"
