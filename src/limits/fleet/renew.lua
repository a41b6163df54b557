-- A holder still running renews its leases (concurrency slots and reservations) for another TTL.
-- KEYS: the lease and reservation sets. ARGV: lease, ttl (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[1])
  redis.call('PEXPIRE', key, 2 * ttl)
end
return 0
