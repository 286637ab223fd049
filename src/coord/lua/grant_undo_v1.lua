-- keygate grant undo v1: gives back a key granted by acquire_v6.lua to a request that the client
-- side (client_v1.lua) refused: the lease and its slot in flight, the key's own rpm charge, its
-- half-open trial, and the round-robin cursor when nobody has moved it since, so a refused request
-- does not shift the rotation.
-- KEYS[1] service hash, KEYS[2] service leases zset, KEYS[3] the granted key's hash
-- ARGV[1] lease member, ARGV[2] key rpm (0 = none), ARGV[3] 1 = the grant was a half-open trial
-- ARGV[4] cursor before the grant (-1 = not moved), ARGV[5] cursor the grant set
-- Returns 1 if the lease was given back. Read by coord::redis::RedisStore::acquire.
local released = redis.call('ZREM', KEYS[2], ARGV[1])
if released == 0 then return 0 end
if (tonumber(redis.call('HGET', KEYS[3], 'inflight') or '0') or 0) > 0 then
  redis.call('HINCRBY', KEYS[3], 'inflight', -1)
end
local rpm = tonumber(ARGV[2])
if rpm > 0 then
  local tat = tonumber(redis.call('HGET', KEYS[3], 'tat_rpm'))
  if tat then redis.call('HSET', KEYS[3], 'tat_rpm', tat - 60000 / rpm) end
end
if ARGV[3] == '1' then redis.call('HSET', KEYS[3], 'probe', 0) end
if ARGV[4] ~= '-1' and redis.call('HGET', KEYS[1], 'rr') == ARGV[5] then
  redis.call('HSET', KEYS[1], 'rr', ARGV[4])
end
return 1
