-- wrk script: chat.lua (named by env CHAT_LUA) at a fixed offered rate, PACE_RPS requests per
-- second over all of wrk's PACE_THREADS threads, however many connections carry them.
-- Each thread keeps its own schedule; a thread that fell more than 50 ms behind starts afresh
-- rather than firing a backlog at once.
dofile(os.getenv("CHAT_LUA"))
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } timespec_t; int clock_gettime(int, timespec_t *); ]]
local ts = ffi.new("timespec_t")
local function now_ms() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6 end
local interval, next_at
function init(args) interval = 1000 * tonumber(os.getenv("PACE_THREADS")) / tonumber(os.getenv("PACE_RPS")) end
function delay()
  local now = now_ms()
  if next_at == nil or next_at < now - 50 then next_at = now end
  next_at = next_at + interval
  return math.max(0, next_at - now)
end
