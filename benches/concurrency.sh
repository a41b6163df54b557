#!/usr/bin/env bash
# Concurrency sweep: keygate against nginx's reverse proxy at 32, 256, 1,024 and 4,096 client
# connections, both keeping the same number of idle upstream connections (keygate's provider
# `pool: {max_idle: POOL}`, nginx's `keepalive POOL`), so that neither wins by reusing more.
# Each proxy runs pinned to GATEWAY_CPU (nginx with one worker), wrk and the mock upstream on
# WRK_CPU, so that nothing but the proxy under test runs on its core, as a provider never runs on
# the gateway's machine. At every connection count wrk alternates runs between them (the order
# flips every round), so host noise strikes both. Per run: RPS, p50/p99, CPU per request (user +
# sys of the proxy's process tree), new upstream connections per 1,000 requests, the proxy's
# upstream sockets in TIME_WAIT after the run, its resident memory, how busy WRK_CPU was (near
# 100%, the load side may have capped the run), and the wake-up interrupts WRK_CPU received per
# request (a send that finds wrk or the mock asleep on an idle load CPU costs the sender one).
# Prints a markdown table of the medians over the rounds, with nginx's CPU per request over
# keygate's beside the RPS ratio: a load side near its limit caps nginx's RPS first, but not what
# each request cost.
#
# usage: benches/concurrency.sh BINARY POLICY
#   POLICY: a policy directory benches/e2e.sh wrote (OUT/policy-full: 1,000 keys, every feature)
#   env: CONNECTIONS ("32 256 1024 4096"), ROUNDS (3), SECONDS_PER_RUN (6), POOL (4096; `none`
#        leaves keygate's policy alone, for builds that predate `pool`, and gives nginx 128, the
#        Pingora default those keep on one thread), GATEWAY_CPU (0), WRK_CPU (1), RATE (unset:
#        each connection sends its next request as soon as the last is answered; a number: wrk
#        offers RATE requests per second in all, however many connections carry them, which
#        compares the per-request cost at different connection counts under the same load),
#        PERF (unset; a directory: `perf record -g` of keygate over each measured window, to
#        PERF/keygate-CONNS-ROUND.data; perf's sampling adds to the CPU figures of those runs),
#        PERF_FREQ (499: perf's samples per second), MOCK_CPU (WRK_CPU; empty: the mock unpinned,
#        free to run beside the proxy under test), PROVIDER_DELAY_MS (unset; a number: the mock
#        answers each chat request that many ms after it arrives, as a provider does while it
#        generates: each request holds a client and an upstream connection that long, so with
#        RATE about RATE x delay requests are in flight, and without it one per connection; the
#        p50 and p99 then include the delay)
#
# It starts its own mock upstream and nginx proxy on ports of their own (mock 18083 for nginx's
# upstream connections, 18084 for keygate's, so that each proxy's connections are counted apart;
# nginx on 18093, keygate on 18171-18172), and stops them when it ends.
#
# New upstream connections are counted from the sockets `ss` lists: every connection opened during
# a run is still there at its end, established or in TIME_WAIT on one side or the other (TIME_WAIT
# lasts 60 s, longer than a run), so the connections opened in a stretch of the run are the
# proxy-side ports listed after it and not before. TIME_WAIT and RSS are read near the run's end.
set -euo pipefail

[ $# -eq 2 ] || { sed -n '2,33p' "$0"; exit 2; }
BINARY=$(realpath "$1") POLICY=$(realpath "$2")
CONNECTIONS=${CONNECTIONS:-32 256 1024 4096} ROUNDS=${ROUNDS:-3} SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
POOL=${POOL:-4096} GATEWAY_CPU=${GATEWAY_CPU:-0} WRK_CPU=${WRK_CPU:-1} RATE=${RATE:-}
MOCK_CPU=${MOCK_CPU-$WRK_CPU}
PERF=${PERF:-} PROVIDER_DELAY_MS=${PROVIDER_DELAY_MS:-}
[ -z "$PERF" ] || mkdir -p "$PERF"
# A build that predates `pool` keeps Pingora's default: 128 idle connections per thread, one here.
if [ "$POOL" = none ]; then NGINX_POOL=128; else NGINX_POOL=$POOL; fi
[ "$SECONDS_PER_RUN" -ge 3 ] || { echo "SECONDS_PER_RUN must be at least 3" >&2; exit 2; }
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
NGINX=${NGINX:-/usr/sbin/nginx}
MOCK_PORT_NGINX=18083 MOCK_PORT_KEYGATE=18084 NGINX_PORT=18093 KEYGATE_PORT=18171
ulimit -n "$(ulimit -Hn)"
# This script's own tools (ss over thousands of sockets takes milliseconds) run on the load core
# too; every process below inherits that unless it is pinned elsewhere.
taskset -cp "$WRK_CPU" $$ >/dev/null
WRK_SCRIPT=$CHAT_LUA
[ -z "$RATE" ] || WRK_SCRIPT="$LOAD/paced.lua"

WORK=$(mktemp -d)
mkdir -p "$WORK/tmp"
KEYGATE_PID=""
cleanup() {
  [ -n "$KEYGATE_PID" ] && kill -9 "$KEYGATE_PID" 2>/dev/null
  for conf in proxy mock; do
    [ -f "$WORK/$conf.pid" ] && "$NGINX" -p "$WORK" -c "$WORK/$conf.conf" -s stop 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The bench mock's JSON chat server on two ports of its own, with room for every connection.
sed -E -e "s/pid mock-nginx.pid;/pid mock.pid;/" \
  -e "s/listen 127.0.0.1:18080 (.*);/listen 127.0.0.1:$MOCK_PORT_NGINX \1; listen 127.0.0.1:$MOCK_PORT_KEYGATE \1;/" \
  -e "s/listen 127.0.0.1:18081/listen 127.0.0.1:18085/; s/listen 127.0.0.1:18082/listen 127.0.0.1:18086/" \
  "$LOAD/mock-nginx.conf" >"$WORK/mock.conf"
if [ -n "$PROVIDER_DELAY_MS" ]; then
  # The same answer, sent by the echo module once the delay has passed.
  delay_s=$(awk -v ms="$PROVIDER_DELAY_MS" 'BEGIN { printf "%.3f", ms / 1000 }')
  sed -i -E "s#location = /v1/chat/completions +\{ add_header x-request-id mock-1; return 200 \\\$mock_chat; \}#location = /v1/chat/completions { add_header x-request-id mock-1; echo_read_request_body; echo_sleep $delay_s; echo -n \\\$mock_chat; }#" "$WORK/mock.conf"
  grep -q "echo_sleep $delay_s" "$WORK/mock.conf" || { echo "the mock's chat location was not found" >&2; exit 1; }
fi
# nginx's proxy with one worker and the same pool as keygate's.
sed -E -e "s/^worker_processes .*/worker_processes 1;\nworker_rlimit_nofile 65536;/" \
  -e "s/pid proxy-nginx.pid;/pid proxy.pid;/" \
  -e "s/worker_connections [0-9]+;/worker_connections 20000;/" \
  -e "s/upstream mock_json .*/upstream mock_json { server 127.0.0.1:$MOCK_PORT_NGINX; keepalive $NGINX_POOL; keepalive_requests 1000000; keepalive_timeout 90s; }/" \
  -e "s/listen 127.0.0.1:18090 /listen 127.0.0.1:$NGINX_PORT /" \
  -e "/listen 127.0.0.1:1809[12] /d" \
  "$LOAD/proxy-nginx.conf" >"$WORK/proxy.conf"
# Unpinned, the kernel moves the mock's worker onto the proxy's core, beside the process that
# wakes it, and the two take turns there.
if [ -n "$MOCK_CPU" ]; then
  taskset -c "$MOCK_CPU" "$NGINX" -p "$WORK" -c "$WORK/mock.conf" -e "$WORK/mock-error.log"
else
  taskset -c "0-$(($(nproc --all) - 1))" "$NGINX" -p "$WORK" -c "$WORK/mock.conf" -e "$WORK/mock-error.log"
fi
taskset -c "$GATEWAY_CPU" "$NGINX" -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/proxy-error.log"
for _ in $(seq 50); do [ -f "$WORK/proxy.pid" ] && [ -f "$WORK/mock.pid" ] && break; sleep 0.1; done
NGINX_PID=$(cat "$WORK/proxy.pid")

# keygate on the policy, its mock provider moved to its own port and given the same pool.
if [ "$POOL" = none ]; then KEYGATE_POOL=""; else KEYGATE_POOL=$POOL; fi
gateway_policy "$POLICY" "$WORK/keygate" "$KEYGATE_PORT" "$MOCK_PORT_KEYGATE" "$KEYGATE_POOL"
(cd "$WORK/keygate" && exec taskset -c "$GATEWAY_CPU" "$BINARY" serve --config "$WORK/keygate/keygate.yaml" \
  >"$WORK/keygate.log" 2>&1) &
KEYGATE_PID=$!
wait_ready $((KEYGATE_PORT + 1)) "$WORK/keygate.log"
KEYGATE_SECRET=$(cat "$WORK/keygate/secret")

# upstream_ports MOCK_PORT: the proxy-side port of every socket between a proxy and MOCK_PORT.
upstream_ports() {
  { ss -tanH "( dport = :$1 )" | awk '{ n = split($4, a, ":"); print a[n] }'
    ss -tanH "( sport = :$1 )" | awk '{ n = split($5, a, ":"); print a[n] }'; } | sort -u
}

# rss_kb PID: resident memory of PID and its children.
rss_kb() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}

# cpu_busy_jiffies CPU: "busy total" jiffies of one CPU since boot, from /proc/stat; the time the
# hypervisor took it (steal) is in neither.
cpu_busy_jiffies() { awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6 }' /proc/stat; }

# wakeup_ipis CPU_LIST: the rescheduling and function-call interrupts CPU_LIST ("1", "0-1") has
# received since boot. Waking a process on an idle vCPU from another costs one; on a virtual
# machine whose idle vCPUs halt, that is among the dearest parts of a send.
wakeup_ipis() {
  awk -v list="$1" '
    NR == 1 { n = split(list, parts, ","); for (k = 1; k <= n; k++) {
                m = split(parts[k], r, "-"); for (c = r[1]; c <= r[m]; c++) want["CPU" c] = 1 }
              for (i = 1; i <= NF; i++) if ($i in want) col[i + 1] = 1 }
    $1 == "RES:" || $1 == "CAL:" { for (i in col) total += $i }
    END { print total + 0 }' /proc/interrupts
}

# ms WRK_LATENCY: a wrk latency ("812.00us", "1.20ms", "2.01s") in ms.
ms() { awk -v v="$1" 'BEGIN { u = v; sub(/[0-9.]+/, "", u); x = v + 0
  printf "%.2f", (u == "us" ? x / 1000 : u == "s" ? x * 1000 : x) }'; }

# run SIDE CONNS: one wrk run against SIDE; prints
# "RPS p50_ms p99_ms cpu_us_per_request new_upstream_per_1000 time_wait rss_mb load_cpu_busy_%
# load_wakeup_ipis_per_request".
# Upstream connections are counted from 1 s into the run to 1 s before its end: wrk closes its
# connections mid-request when a run ends, which makes a proxy drop the upstream connections of
# those requests, and the next run's first moments replace them; steady state lies in between.
run() {
  local side=$1 conns=$2 port pid mock auth before_ports before_ticks after_ports out after_ticks
  local requests new tw t0 t1 rss load0 load1 ipi0 ipi1
  if [ "$side" = nginx ]; then port=$NGINX_PORT pid=$NGINX_PID mock=$MOCK_PORT_NGINX auth="Bearer none"
  else port=$KEYGATE_PORT pid=$KEYGATE_PID mock=$MOCK_PORT_KEYGATE auth="Bearer $KEYGATE_SECRET"; fi
  before_ticks=$(cpu_ticks "$pid")
  BENCH_AUTH="$auth" CHAT_LUA="$CHAT_LUA" PACE_RPS="$RATE" PACE_THREADS=2 \
    taskset -c "$WRK_CPU" wrk -t2 -c"$conns" -d"${SECONDS_PER_RUN}s" --timeout 10s \
    --latency -s "$WRK_SCRIPT" "http://127.0.0.1:$port/v1/chat/completions" >"$WORK/wrk.txt" 2>&1 &
  local wrk_pid=$!
  sleep 1
  before_ports=$(upstream_ports "$mock"); t0=$(date +%s.%N); load0=$(cpu_busy_jiffies "$WRK_CPU")
  ipi0=$(wakeup_ipis "$WRK_CPU")
  if [ -n "$PERF" ] && [ "$side" = keygate ] && [ -n "${ROUND:-}" ]; then
    perf record -q -F "${PERF_FREQ:-499}" -g -p "$pid" -o "$PERF/keygate-$conns-$ROUND.data" -- sleep $((SECONDS_PER_RUN - 2)) 2>/dev/null
  else
    sleep $((SECONDS_PER_RUN - 2))
  fi
  ipi1=$(wakeup_ipis "$WRK_CPU")
  after_ports=$(upstream_ports "$mock"); t1=$(date +%s.%N); load1=$(cpu_busy_jiffies "$WRK_CPU")
  tw=$(ss -tanH state time-wait "( dport = :$mock )" | grep -c . || true)
  rss=$(rss_kb "$pid")
  wait "$wrk_pid"
  after_ticks=$(cpu_ticks "$pid")
  out=$(cat "$WORK/wrk.txt")
  require_2xx "$side" "$out"
  new=$(comm -13 <(echo "$before_ports") <(echo "$after_ports") | grep -c . || true)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    -v p50="$(ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")" \
    -v p99="$(ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")" \
    -v t=$((after_ticks - before_ticks)) -v n="$requests" -v hz="$(getconf CLK_TCK)" \
    -v new="$new" -v window="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v tw="$tw" -v rss="$rss" -v l0="$load0" -v l1="$load1" -v ipis=$((ipi1 - ipi0)) \
    'BEGIN { split(l0, a, " "); split(l1, b, " ")
      printf "%.0f %.2f %.2f %.1f %.2f %d %.0f %.0f %.2f\n", r, p50, p99, t * 1e6 / hz / n, new * 1000 / (r * window), tw, rss / 1024,
        100 * (b[1] - a[1]) / (b[2] - a[2]), ipis / (r * window) }'
}

echo "keygate $BINARY, policy $POLICY, pool $POOL (nginx keepalive $NGINX_POOL), ${RATE:-unpaced} RPS offered, provider delay ${PROVIDER_DELAY_MS:-0} ms, $ROUNDS rounds of ${SECONDS_PER_RUN}s per side and connection count" >&2
run nginx 32 >/dev/null
run keygate 32 >/dev/null
for conns in $CONNECTIONS; do
  # A first run at this count fills both pools; steady state is what is measured.
  run nginx "$conns" >/dev/null
  run keygate "$conns" >/dev/null
  for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="nginx keygate"; else order="keygate nginx"; fi
    for side in $order; do
      echo "$conns $side $round $(ROUND=$round run "$side" "$conns")"
    done
  done
done | tee "$WORK/runs.txt" >&2
awk '
  { key = $1 " " $2; n[key]++; for (i = 4; i <= 12; i++) v[key, i, n[key]] = $i
    rps[$1, $2, $3] = $4
    if (!($1 in seen)) { seen[$1] = 1; order[++c] = $1 } }
  function sorted(a, m,   k, j, t) {
    for (k = 1; k <= m; k++) for (j = k + 1; j <= m; j++) if (a[j] < a[k]) { t = a[k]; a[k] = a[j]; a[j] = t } }
  function median(key, i,   k, m, a) {
    m = n[key]; for (k = 1; k <= m; k++) a[k] = v[key, i, k]
    sorted(a, m)
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
  END {
    print "| connections | side | RPS | keygate/nginx RPS (range over rounds) | p50 ms | p99 ms | CPU µs/request | nginx/keygate CPU per request | new upstream connections per 1,000 requests | upstream TIME_WAIT | RSS MB | load CPU busy % | wake-up IPIs to the load CPU per request |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for (k = 1; k <= c; k++) {
      conns = order[k]; m = n[conns " keygate"]
      for (r = 1; r <= m; r++) ratio[r] = rps[conns, "keygate", r] / rps[conns, "nginx", r]
      sorted(ratio, m)
      mid = m % 2 ? ratio[(m + 1) / 2] : (ratio[m / 2] + ratio[m / 2 + 1]) / 2
      for (s = 1; s <= 2; s++) {
        side = s == 1 ? "nginx" : "keygate"; key = conns " " side
        cell = s == 1 ? "" : sprintf("%.2f (%.2f-%.2f)", mid, ratio[1], ratio[m])
        cpu = s == 1 ? "" : sprintf("%.2f", median(conns " nginx", 7) / median(key, 7))
        printf "| %s | %s | %d | %s | %.2f | %.2f | %.1f | %s | %.2f | %d | %d | %d | %.2f |\n", conns, side,
          median(key, 4), cell, median(key, 5), median(key, 6), median(key, 7), cpu,
          median(key, 8), median(key, 9), median(key, 10), median(key, 11), median(key, 12)
      }
    }
  }' "$WORK/runs.txt"
