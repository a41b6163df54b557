# Helpers that the load benches source.

# The load set-up they drive: the nginx mock upstream and proxy (mock.sh) and the wrk script.
LOAD="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/load"
CHAT_LUA="$LOAD/chat.lua"

# wait_ready ADMIN_PORT LOG [SECONDS]: wait up to SECONDS (default 10) for a keygate's /readyz on
# 127.0.0.1:ADMIN_PORT; if it never answers, print the gateway's LOG and exit.
wait_ready() {
  local _
  for _ in $(seq $((${3:-10} * 10))); do
    curl -sf -o /dev/null "http://127.0.0.1:$1/readyz" && return
    sleep 0.1
  done
  echo "keygate on admin port $1 did not become ready; its log:" >&2
  cat "$2" >&2
  exit 1
}

# listening PORT: whether something accepts connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# cpu_ticks PID: user + system ticks of PID and its children (nginx's workers); 0 without a PID.
cpu_ticks() {
  [ -n "$1" ] || { echo 0; return; }
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# require_2xx NAME WRK_OUTPUT: a side answering errors (its upstream down, say) is fast for the
# wrong reason; stop rather than report its figures.
require_2xx() {
  grep -qE 'Non-2xx|Socket errors' <<<"$2" || return 0
  echo "$1 did not answer every request with a 2xx; wrk said:" >&2
  echo "$2" >&2
  exit 1
}

# gateway_policy POLICY DIR PORT PROVIDER_PORT [POOL]: a copy of POLICY in DIR for a bench's own
# keygate, on 127.0.0.1:PORT with its admin API on PORT + 1, its mock provider
# (http://127.0.0.1:18080 in the policies e2e.sh writes) moved to PROVIDER_PORT, and, given
# POOL, that provider's idle pool set to POOL connections.
gateway_policy() {
  local yaml="$2/keygate.yaml" provider="http://127.0.0.1:$4"
  cp -r "$1" "$2"
  sed -i -E -e "s/^listen: .*/listen: 127.0.0.1:$3/" \
    -e "s/^admin_listen: .*/admin_listen: 127.0.0.1:$(($3 + 1))/" \
    -e "s#- \{url: \"http://127.0.0.1:18080\"\}#- {url: \"$provider\"}#" "$yaml"
  grep -q -- "- {url: \"$provider\"}" "$yaml" ||
    { echo "the policy has no provider at http://127.0.0.1:18080" >&2; exit 1; }
  [ -z "${5:-}" ] || sed -i -E "s#- \{url: \"$provider\"\}#&\n    pool: {max_idle: $5, idle_timeout: 90s}#" "$yaml"
}
