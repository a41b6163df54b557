-- A holder still running renews its leases (concurrency slots and reservations) for another TTL.
-- KEYS: the lease sets, then the reservation sets. ARGV: lease, ttl (ms), lease sets, cost
-- reserved (a reservation's member is `lease:amount`).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, nl = tonumber(ARGV[2]), tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local member = ARGV[1]
  if i > nl then member = ARGV[1] .. ':' .. ARGV[4] end
  redis.call('ZADD', key, 'XX', now + ttl, member)
  -- Reservation sets keep no expiry (see admit.lua).
  if i <= nl then redis.call('PEXPIRE', key, 2 * ttl) end
end
return 0
