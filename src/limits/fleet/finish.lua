-- The end of an admitted request: its real token count replaces the estimate in its token
-- windows, its concurrency leases are given back, and its real cost replaces its reservation.
-- A reservation that expired meanwhile was given back already; the cost is booked either way.
-- (The fleet's usage view is written beside this script, summed over a batch of requests.)
-- KEYS: the token window hashes, the lease sets, then (budget hash, reservation set) pairs.
-- More tokens than estimated are charged to the current window; fewer are refunded to the window
-- the estimate was charged to, or dropped once it has passed.
-- ARGV: lease, token delta, token windows, lease sets, budgets, cost (nano-dollars), day, month,
--   cost reserved at admission (the reservation's member is `lease:amount`), then the length in
--   ms of each token window, then when the request was admitted (ms).
-- Returns per budget: spent today and this month after booking.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, delta = ARGV[1], tonumber(ARGV[2])
local nt, nl, nb = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cost, day, month, reserved = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local k = 1
local out = {}
for i = 1, nt do
  local key, per = KEYS[k], tonumber(ARGV[9 + i]); k = k + 1
  if delta ~= 0 then
    local idx = math.floor(now / per)
    local h = redis.call('HMGET', key, 'i', 'c', 'p')
    local c, p = tonumber(h[2]) or 0, tonumber(h[3]) or 0
    local at = tonumber(h[1]) or idx
    local fresh = not h[1] or at ~= idx
    if at ~= idx then
      if at == idx - 1 then p = c else p = 0 end
      c = 0
    end
    if delta > 0 then
      c = c + delta
    else
      local charged = math.floor(tonumber(ARGV[9 + nt + 1]) / per)
      if charged == idx then c = math.max(0, c + delta)
      elseif charged == idx - 1 then p = math.max(0, p + delta) end
    end
    redis.call('HSET', key, 'i', idx, 'c', c, 'p', p)
    if fresh then redis.call('PEXPIREAT', key, (idx + 2) * per + 1000) end
  end
end
for i = 1, nl do
  redis.call('ZREM', KEYS[k], lease); k = k + 1
end
for i = 1, nb do
  local bkey, rkey = KEYS[k], KEYS[k + 1]; k = k + 2
  if reserved ~= '0' and redis.call('ZREM', rkey, lease .. ':' .. reserved) == 1 then
    redis.call('HINCRBY', bkey, 'r', '-' .. reserved)
  end
  if cost ~= '0' then
    local today = redis.call('HINCRBY', bkey, 'd:' .. day, cost)
    out[#out + 1] = today
    out[#out + 1] = redis.call('HINCRBY', bkey, 'm:' .. month, cost)
    -- The first spending of a day keeps the hash for a month past it.
    if today == tonumber(cost) then redis.call('PEXPIRE', bkey, 3024000000) end
  else
    local b = redis.call('HMGET', bkey, 'd:' .. day, 'm:' .. month)
    out[#out + 1] = tonumber(b[1]) or 0
    out[#out + 1] = tonumber(b[2]) or 0
  end
end
return out
