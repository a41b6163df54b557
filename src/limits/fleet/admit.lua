-- Admission of one request against every scope it counts in: check all, then count all or nothing.
-- Time is the server's, so instance clocks do not matter.
-- KEYS, per scope: one hash per window, then the scope's lease set if it has a concurrency cap,
--   then its budget hash and reservation set if it has a budget.
-- A reservation's member is `lease:amount`, so that whoever removes it knows what to give back.
-- ARGV: lease, lease ttl (ms), token estimate, cost reserved (nano-dollars), day, month, scopes,
--   then per scope: windows, (kind 0 requests | 1 tokens, length ms, limit) per window,
--   max concurrent (0 for none), budget (0 none, 1 enforce, 2 track), daily cap, monthly cap
--   (-1 for none).
-- Returns: refusal kind (0 none, 1 rate, 2 concurrency, 3 budget), its scope, its window or
--   period (1 daily, 2 monthly), the wait in ms, then per window (remaining, reset ms), then per
--   concurrency cap the slots held (with this request's, if admitted), then per budgeted scope
--   (spent today, spent this month, reserved).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Numbers handed to redis.call are formatted once, as integers: Lua's own conversion of a number
-- to a string is a floating-point format, which costs more than the command it feeds.
local function int(n) return string.format('%d', n) end
local now_arg = int(now)
local lease, ttl = ARGV[1], tonumber(ARGV[2])
local cost = ARGV[4]
local day, month = ARGV[5], ARGV[6]
local scopes = tonumber(ARGV[7])
local a, k = 8, 1
local wins, leases, budgets = {}, {}, {}
local refusal = {0, 0, 0, 0}

-- When one more fits under the sliding estimate, as src/limits/window.rs computes it.
local function wait_for(c, p, idx, per, limit)
  local est = p * (per - (now - idx * per)) / per + c
  if est + 1 <= limit then return 0 end
  local start = idx * per
  local at
  if c + 1 <= limit and p > 0 then
    at = start + (1 - (limit - 1 - c) / p) * per
  elseif c > 0 and 1 <= limit then
    at = start + per + math.max(0, 1 - (limit - 1) / c) * per
  else
    at = now + per
  end
  return math.max(1, math.ceil(at) - now)
end

for s = 1, scopes do
  local nwin = tonumber(ARGV[a]); a = a + 1
  for w = 1, nwin do
    local kind, per, limit = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    a = a + 3
    local key = KEYS[k]; k = k + 1
    local idx = math.floor(now / per)
    local h = redis.call('HMGET', key, 'i', 'c', 'p')
    local i, c, p = tonumber(h[1]) or idx, tonumber(h[2]) or 0, tonumber(h[3]) or 0
    -- A window's hash outlives the next window (its count is that one's previous count); its
    -- expiry is set once, when the window starts.
    local fresh = not h[1] or i ~= idx
    if i ~= idx then
      if i == idx - 1 then p = c else p = 0 end
      c = 0
    end
    local rest = per - (now - idx * per)
    local est = p * rest / per + c
    local fits
    if kind == 0 then fits = est + 1 <= limit else fits = est < limit end
    if not fits then
      local wait = wait_for(c, p, idx, per, limit)
      if refusal[1] ~= 1 or wait > refusal[4] then refusal = {1, s, w, wait} end
    end
    wins[#wins + 1] = {key, idx, c, p, kind, per, limit, rest, fresh}
  end
  local max = tonumber(ARGV[a]); a = a + 1
  if max > 0 then
    local key = KEYS[k]; k = k + 1
    -- Leases whose holder stopped renewing them (it crashed) are given back.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_arg)
    local held = redis.call('ZCARD', key)
    if held >= max and refusal[1] == 0 then refusal = {2, s, 0, 1000} end
    leases[#leases + 1] = {key, held}
  end
  local mode, dcap, mcap = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if mode > 0 then
    local bkey, rkey = KEYS[k], KEYS[k + 1]; k = k + 2
    -- Reservations whose holder stopped renewing them (it crashed) are given back.
    local gone = redis.call('ZRANGEBYSCORE', rkey, '-inf', now_arg)
    if #gone > 0 then
      local back = 0
      for _, m in ipairs(gone) do back = back + (tonumber(string.match(m, ':(%d+)$')) or 0) end
      if back > 0 then redis.call('HINCRBY', bkey, 'r', int(-back)) end
      redis.call('ZREMRANGEBYSCORE', rkey, '-inf', now_arg)
    end
    local b = redis.call('HMGET', bkey, 'd:' .. day, 'm:' .. month, 'r')
    local sd, sm, r = tonumber(b[1]) or 0, tonumber(b[2]) or 0, tonumber(b[3]) or 0
    -- The spend hash lives a month past its last day of spending; refreshed once a day.
    if not b[1] then redis.call('PEXPIRE', bkey, 3024000000) end
    if mode == 1 and refusal[1] == 0 then
      local need = r + tonumber(cost)
      if dcap >= 0 and sd + need > dcap then refusal = {3, s, 1, 0}
      elseif mcap >= 0 and sm + need > mcap then refusal = {3, s, 2, 0} end
    end
    budgets[#budgets + 1] = {bkey, rkey, sd, sm, r}
  end
end

local admitted = refusal[1] == 0
local expires = int(now + ttl)
local out = {refusal[1], refusal[2], refusal[3], refusal[4]}
for _, w in ipairs(wins) do
  local key, idx, c, p, kind, per, limit, rest = w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
  if admitted then
    local by = '1'
    if kind == 1 then by = ARGV[3] end
    c = c + tonumber(by)
    if w[9] then
      redis.call('HSET', key, 'i', int(idx), 'c', int(c), 'p', int(p))
      redis.call('PEXPIREAT', key, int((idx + 2) * per + 1000))
    else
      -- The window and its previous count are as stored; only the count moves.
      redis.call('HINCRBY', key, 'c', by)
    end
  end
  out[#out + 1] = math.max(0, limit - c - math.ceil(p * rest / per))
  local reset = 0
  if c > 0 then reset = (idx + 2) * per - now elseif p > 0 then reset = (idx + 1) * per - now end
  out[#out + 1] = reset
end
for _, l in ipairs(leases) do
  local held = l[2]
  if admitted then
    redis.call('ZADD', l[1], expires, lease)
    redis.call('PEXPIRE', l[1], int(2 * ttl))
    held = held + 1
  end
  out[#out + 1] = held
end
for _, b in ipairs(budgets) do
  local r = b[5]
  if admitted and cost ~= '0' then
    r = redis.call('HINCRBY', b[1], 'r', cost)
    -- No expiry on a reservation set: one that expired with a crashed holder's member in it
    -- would leave its amount in `r` for good. Redis deletes the set once it is empty.
    redis.call('ZADD', b[2], expires, lease .. ':' .. cost)
  end
  out[#out + 1] = b[3]
  out[#out + 1] = b[4]
  out[#out + 1] = r
end
return out
