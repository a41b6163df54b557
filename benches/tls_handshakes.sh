#!/usr/bin/env bash
# TLS handshakes keygate makes to a provider per 10,000 requests, full and resumed, against a local
# nginx TLS upstream whose certificate comes from a throwaway CA that the provider trusts through
# `ca_file`. The provider's pool keeps POOL idle connections (the policy's other provider, unused,
# one: the pool's size is the sum) while wrk keeps CONNECTIONS requests
# in flight, so connections keep being closed and reopened: each reopening is a handshake, which
# resumes an earlier session unless keygate lost it. nginx logs `$ssl_session_reused` for the first
# request of every connection.
#
# usage: benches/tls_handshakes.sh BINARY POLICY
#   POLICY: a policy directory benches/e2e.sh wrote (OUT/policy-full)
#   env: CONNECTIONS (512), POOL (128; `none` leaves the policy's pool alone, for builds that
#        predate `pool`: Pingora's default then keeps 128 per thread), SECONDS_PER_RUN (6),
#        GATEWAY_CPU (0), WRK_CPU (1), TLS_PROTOCOLS ("TLSv1.2 TLSv1.3": what the upstream offers;
#        rustls keeps at most 8 single-use TLS 1.3 tickets per server, while a TLS 1.2 session
#        resumes any number of connections, so a burst of reconnects resumes far more over 1.2)
# Listens on 127.0.0.1:18089 (the upstream) and 18177-18178 (keygate).
set -euo pipefail

[ $# -eq 2 ] || { sed -n '2,18p' "$0"; exit 2; }
BINARY=$(realpath "$1") POLICY=$(realpath "$2")
CONNECTIONS=${CONNECTIONS:-512} POOL=${POOL:-128} SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
GATEWAY_CPU=${GATEWAY_CPU:-0} WRK_CPU=${WRK_CPU:-1} TLS_PROTOCOLS=${TLS_PROTOCOLS:-TLSv1.2 TLSv1.3}
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
NGINX=${NGINX:-/usr/sbin/nginx}
UPSTREAM_PORT=18089 KEYGATE_PORT=18177
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
mkdir -p "$WORK/tmp"
KEYGATE_PID=""
cleanup() {
  [ -n "$KEYGATE_PID" ] && kill -9 "$KEYGATE_PID" 2>/dev/null
  [ -f "$WORK/tls.pid" ] && "$NGINX" -p "$WORK" -c "$WORK/tls.conf" -s stop 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=keygate bench CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$WORK/leaf.key" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 1 -extfile "$WORK/leaf.ext" -out "$WORK/leaf.pem" 2>/dev/null

cat >"$WORK/tls.conf" <<EOF
worker_processes 1;
pid tls.pid;
error_log tls-error.log warn;
events { worker_connections 4096; }
http {
    log_format handshakes '\$connection_requests \$ssl_session_reused';
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT ssl;
        ssl_certificate $WORK/leaf.pem;
        ssl_certificate_key $WORK/leaf.key;
        ssl_session_cache shared:bench:10m;
        ssl_session_tickets on;
        ssl_protocols $TLS_PROTOCOLS;
        access_log $WORK/requests.log handshakes;
        location / {
            default_type application/json;
            return 200 '{"id":"chatcmpl-tls","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":2,"total_tokens":22}}';
        }
    }
}
EOF
"$NGINX" -p "$WORK" -c "$WORK/tls.conf" -e "$WORK/tls-error.log"

cp -r "$POLICY" "$WORK/keygate"
sed -i -E -e "s/^listen: .*/listen: 127.0.0.1:$KEYGATE_PORT/" \
  -e "s/^admin_listen: .*/admin_listen: 127.0.0.1:$((KEYGATE_PORT + 1))/" \
  -e "s#- \{url: \"http://127.0.0.1:18080\"\}#- {url: \"https://localhost:$UPSTREAM_PORT\"}\n    ca_file: $WORK/ca.pem#" \
  "$WORK/keygate/keygate.yaml"
if [ "$POOL" != none ]; then
  sed -i -E -e "s#ca_file: .*#&\n    pool: {max_idle: $POOL}#" \
    -e "s#- \{url: \"http://127.0.0.1:18082\"\}#&\n    pool: {max_idle: 1}#" "$WORK/keygate/keygate.yaml"
fi
grep -q "ca_file" "$WORK/keygate/keygate.yaml" || { echo "the policy has no provider at http://127.0.0.1:18080" >&2; exit 1; }
(cd "$WORK/keygate" && exec taskset -c "$GATEWAY_CPU" "$BINARY" serve --config "$WORK/keygate/keygate.yaml" \
  >"$WORK/keygate.log" 2>&1) &
KEYGATE_PID=$!
wait_ready $((KEYGATE_PORT + 1)) "$WORK/keygate.log"

out=$(BENCH_AUTH="Bearer $(cat "$WORK/keygate/secret")" taskset -c "$WRK_CPU" wrk -t2 -c"$CONNECTIONS" \
  -d"${SECONDS_PER_RUN}s" -s "$CHAT_LUA" "http://127.0.0.1:$KEYGATE_PORT/v1/chat/completions" 2>&1)
require_2xx keygate "$out"
sleep 1
awk -v binary="$BINARY" -v conns="$CONNECTIONS" -v pool="$POOL" -v tls="$TLS_PROTOCOLS" '
  { requests++ } $1 == 1 { if ($2 == "r") resumed++; else full++ }
  END { printf "%s: %d requests at %d connections, pool %s, upstream %s: per 10,000 requests %.0f handshakes, %.0f full and %.0f resumed\n",
          binary, requests, conns, pool, tls, (full + resumed) * 1e4 / requests, full * 1e4 / requests, resumed * 1e4 / requests }' \
  "$WORK/requests.log"
