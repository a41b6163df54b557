# Helpers that benches/paired.sh and benches/latency.sh source.

# The load set-up they drive: the nginx mock upstream and proxy (mock.sh) and the wrk script.
LOAD="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/load"
CHAT_LUA="$LOAD/chat.lua"

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
