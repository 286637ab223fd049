-- keygate renew v2: extends a live lease, on the Redis server's clock (the one acquire_v6 expires
-- leases by). A lease that already expired and was reclaimed is not brought back.
-- KEYS[1] service leases zset; ARGV[1] lease member; ARGV[2] ttl ms
-- Returns 1 if the lease was extended, 0 if it no longer exists. Read by RedisStore::renew.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
