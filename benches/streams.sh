#!/usr/bin/env bash
# Long streams at LLM concurrency: STREAMS concurrent paced SSE streams (one event every
# INTERVAL_MS, EVENTS of them: 30 s by default) straight to a paced upstream, then the same through
# nginx's reverse proxy (one worker, unbuffered), then through one keygate. nginx is the floor of
# what any proxy on the same core adds. Reports for each: streams completed and failed, time to
# the first event and the gaps between events (p50, p99, max); CPU per event of either proxy; for
# keygate: resident memory idle and at its peak while the streams are open, memory per open stream.
#
# usage: benches/streams.sh BINARY POLICY SSE_LOAD
#   BINARY: keygate (release); SSE_LOAD: examples/sse_load.rs built in release
#   POLICY: a policy directory benches/e2e.sh wrote (OUT/policy-full: 1,000 keys, every feature)
#   env: STREAMS (5000), INTERVAL_MS (100), EVENTS (300), GATEWAY_CPU (0), LOAD_CPU (1),
#        OPEN_OVER_MS (0: every stream opens at once; else they open evenly over that time),
#        NGINX (/usr/sbin/nginx)
#
# The upstream listens on 127.0.0.1:18087, nginx on 18088 and keygate on 18173-18174; the
# upstream and the clients share LOAD_CPU, nginx and then keygate have GATEWAY_CPU to themselves.
set -euo pipefail

[ $# -eq 3 ] || { sed -n '2,15p' "$0"; exit 2; }
BINARY=$(realpath "$1") POLICY=$(realpath "$2") SSE_LOAD=$(realpath "$3")
STREAMS=${STREAMS:-5000} INTERVAL_MS=${INTERVAL_MS:-100} EVENTS=${EVENTS:-300}
GATEWAY_CPU=${GATEWAY_CPU:-0} LOAD_CPU=${LOAD_CPU:-1} OPEN_OVER_MS=${OPEN_OVER_MS:-0}
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
NGINX=${NGINX:-/usr/sbin/nginx}
UPSTREAM_PORT=18087 NGINX_PORT=18088 KEYGATE_PORT=18173
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null; [ -f "$WORK/nginx.pid" ] && "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -s stop 2>/dev/null; rm -rf "$WORK"' EXIT

taskset -c "$LOAD_CPU" "$SSE_LOAD" upstream "127.0.0.1:$UPSTREAM_PORT" "$INTERVAL_MS" "$EVENTS" &
PIDS+=($!)
for _ in $(seq 50); do listening "$UPSTREAM_PORT" && break; sleep 0.1; done

gateway_policy "$POLICY" "$WORK/keygate" "$KEYGATE_PORT" "$UPSTREAM_PORT"
(cd "$WORK/keygate" && exec taskset -c "$GATEWAY_CPU" "$BINARY" serve --config "$WORK/keygate/keygate.yaml" \
  >"$WORK/keygate.log" 2>&1) &
KEYGATE_PID=$!
PIDS+=($KEYGATE_PID)
wait_ready $((KEYGATE_PORT + 1)) "$WORK/keygate.log"
SECRET=$(cat "$WORK/keygate/secret")

clients() { # PORT BEARER
  taskset -c "$LOAD_CPU" "$SSE_LOAD" clients "127.0.0.1:$1" /v1/chat/completions "$STREAMS" "$2" gpt-4o-mini "$OPEN_OVER_MS"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$KEYGATE_PID/status"; }

echo "direct: $STREAMS streams of $EVENTS events every ${INTERVAL_MS} ms, opened over ${OPEN_OVER_MS} ms" >&2
direct=$(clients "$UPSTREAM_PORT" none)
echo "$direct" >&2

# nginx as a streaming reverse proxy: one worker on keygate's core, each event passed on as it
# arrives, a keep-alive pool as large as the streams.
mkdir -p "$WORK/tmp"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 65536;
pid nginx.pid;
error_log nginx-error.log warn;
events { worker_connections 20000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    tcp_nodelay on;
    keepalive_requests 1000000;
    upstream paced { server 127.0.0.1:$UPSTREAM_PORT; keepalive $STREAMS; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=8192;
        location / {
            proxy_pass http://paced;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
CONF
taskset -c "$GATEWAY_CPU" "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
for _ in $(seq 50); do listening "$NGINX_PORT" && break; sleep 0.1; done
listening "$NGINX_PORT" || { echo "nginx did not start; its log:" >&2; cat "$WORK/nginx-error.log" >&2; exit 1; }
NGINX_PID=$(cat "$WORK/nginx.pid")
nginx_before=$(cpu_ticks "$NGINX_PID")
echo "nginx: the same streams through it" >&2
nginx=$(clients "$NGINX_PORT" none)
nginx_ticks=$(($(cpu_ticks "$NGINX_PID") - nginx_before))
echo "$nginx" >&2
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -s stop
# Its worker closing 5,000 connections would take CPU from keygate's run.
while kill -0 "$NGINX_PID" 2>/dev/null; do sleep 0.1; done

# A short round through keygate first, so that the idle figure is that of a warmed-up gateway.
for _ in $(seq 10); do
  curl -s -o /dev/null -m 0.5 -H "authorization: Bearer $SECRET" -H 'content-type: application/json' \
    -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}' \
    "http://127.0.0.1:$KEYGATE_PORT/v1/chat/completions" || true
done
sleep 1
idle_rss=$(rss_kb)
before=$(cpu_ticks "$KEYGATE_PID")
echo "keygate: the same streams through it" >&2
clients "$KEYGATE_PORT" "$SECRET" >"$WORK/through.json" &
load=$!
peak_rss=$idle_rss
while kill -0 "$load" 2>/dev/null; do
  rss=$(rss_kb); [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
  sleep 0.5
done
wait "$load"
after=$(cpu_ticks "$KEYGATE_PID")
through=$(cat "$WORK/through.json")
echo "$through" >&2

python3 - "$direct" "$nginx" "$through" "$idle_rss" "$peak_rss" $((after - before)) "$(getconf CLK_TCK)" "$STREAMS" "$nginx_ticks" <<'PY'
import json, sys
direct, nginx, through = (json.loads(a) for a in sys.argv[1:4])
idle, peak, ticks, hz, streams, nginx_ticks = (int(a) for a in sys.argv[4:10])
print("| | streams completed | failed | first event p50 ms | p99 ms | gap p50 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|---|---|")
for name, r in [("direct", direct), ("through nginx", nginx), ("through keygate", through)]:
    print(f"| {name} | {r['completed']} | {r['failed']} | {r['first_event_ms']['p50']:.2f} | "
          f"{r['first_event_ms']['p99']:.2f} | {r['gap_ms']['p50']:.2f} | {r['gap_ms']['p99']:.2f} | "
          f"{r['gap_ms']['max']:.2f} |")
print()
for name, r in [("nginx", nginx), ("keygate", through)]:
    d = lambda f, q: r[f][q] - direct[f][q]
    print(f"{name} added: first event p50 {d('first_event_ms', 'p50'):+.2f} ms, p99 {d('first_event_ms', 'p99'):+.2f} ms; "
          f"gap p50 {d('gap_ms', 'p50'):+.2f} ms, p99 {d('gap_ms', 'p99'):+.2f} ms.")
print(f"keygate resident memory: {idle / 1024:.0f} MB idle, {peak / 1024:.0f} MB at most with the streams open "
      f"({(peak - idle) / streams:.1f} KB per open stream); CPU {ticks / hz * 1e6 / max(through['events'], 1):.1f} µs per event "
      f"({through['events']} events); nginx: CPU {nginx_ticks / hz * 1e6 / max(nginx['events'], 1):.1f} µs per event.")
PY
