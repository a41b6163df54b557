-- The end of a batch of admitted requests of one workload, summed per key: the real token counts
-- replace the estimates in their token windows, their concurrency leases are given back, and
-- their real cost replaces their reservations. A reservation that expired meanwhile was given
-- back already; the cost is booked either way. One call settles the whole batch, so that Redis
-- runs a few commands per key instead of a dozen per request.
-- (The fleet's usage view is written beside this script, summed over the same batch.)
-- KEYS: the token window hashes, the lease sets, then (budget hash, reservation set) pairs.
-- ARGV: token windows, lease sets, budgets, then
--   per token window: its length in ms, the tokens beyond the estimates (charged to the current
--     window), the count of refunds, then (index of the window charged at admission, tokens) per
--     refund; a refund goes back to the window the estimate was charged to, or is dropped once
--     that window has passed;
--   per lease set: the count of members, then the members;
--   per budget: day, month, cost to book (nano-dollars), the count of reservations, then their
--     members (`lease:amount`, as admit.lua names them), then their amounts.
-- Returns per budget: spent today and this month after booking.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nw, nl, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a, k = 4, 1
local out = {}
for _ = 1, nw do
  local key = KEYS[k]; k = k + 1
  local per, more, refunds = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local idx = math.floor(now / per)
  local h = redis.call('HMGET', key, 'i', 'c', 'p')
  local c, p = tonumber(h[2]) or 0, tonumber(h[3]) or 0
  local at = tonumber(h[1]) or idx
  local fresh = not h[1] or at ~= idx
  if at ~= idx then
    if at == idx - 1 then p = c else p = 0 end
    c = 0
  end
  c = c + more
  for _ = 1, refunds do
    local charged, less = tonumber(ARGV[a]), tonumber(ARGV[a + 1]); a = a + 2
    if charged == idx then c = math.max(0, c - less)
    elseif charged == idx - 1 then p = math.max(0, p - less) end
  end
  redis.call('HSET', key, 'i', idx, 'c', c, 'p', p)
  if fresh then redis.call('PEXPIREAT', key, (idx + 2) * per + 1000) end
end
for _ = 1, nl do
  local n = tonumber(ARGV[a]); a = a + 1
  redis.call('ZREM', KEYS[k], unpack(ARGV, a, a + n - 1))
  k = k + 1; a = a + n
end
for _ = 1, nb do
  local bkey, rkey = KEYS[k], KEYS[k + 1]; k = k + 2
  local day, month, cost, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  if n > 0 then
    local held = redis.call('ZMSCORE', rkey, unpack(ARGV, a, a + n - 1))
    local back, any = 0, false
    for i = 1, n do
      if held[i] then back = back + tonumber(ARGV[a + n + i - 1]); any = true end
    end
    if any then
      redis.call('ZREM', rkey, unpack(ARGV, a, a + n - 1))
      redis.call('HINCRBY', bkey, 'r', string.format('%d', -back))
    end
    a = a + 2 * n
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
