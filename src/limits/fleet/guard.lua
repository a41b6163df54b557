-- One failed authentication from an address, counted fleet-wide with the sliding-window estimate
-- of src/limits/window.rs: counted if one more fits under the limit, else refused uncounted, as
-- the per-instance guard does.
-- KEYS[1]: the address's window hash. ARGV: window length (ms), failures allowed.
-- Returns 0 when counted, else the wait in ms until one more would be counted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local idx = math.floor(now / per)
local h = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
local i, c, p = tonumber(h[1]) or idx, tonumber(h[2]) or 0, tonumber(h[3]) or 0
if i ~= idx then
  if i == idx - 1 then p = c else p = 0 end
  c = 0
end
if p * (per - (now - idx * per)) / per + c + 1 > max then
  local start = idx * per
  local at
  if c + 1 <= max and p > 0 then
    at = start + (1 - (max - 1 - c) / p) * per
  elseif c > 0 and 1 <= max then
    at = start + per + math.max(0, 1 - (max - 1) / c) * per
  else
    at = now + per
  end
  return math.max(1, math.ceil(at) - now)
end
redis.call('HSET', KEYS[1], 'i', idx, 'c', c + 1, 'p', p)
redis.call('PEXPIRE', KEYS[1], 2 * per + 1000)
return 0
