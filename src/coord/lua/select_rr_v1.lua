-- keygate select_rr v1: pick the next usable key of a service, round robin, in one round trip.
-- KEYS[1]      round-robin cursor of the service (integer, INCR'd once per call)
-- KEYS[2..n+1] per-key state hashes, in the order of the service's key list:
--              field `until` = ms epoch the key is out of rotation until (-1: until re-enabled),
--              field `fails` = consecutive failures, field `reason`.
-- Returns {index, fails}: index is 1-based into the key list, 0 when no key is usable.
-- Read by coord::redis::RedisStore::select_round_robin into `Option<Pick>`.
local n = #KEYS - 1
if n <= 0 then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local c = redis.call('INCR', KEYS[1])
for i = 0, n - 1 do
  local idx = ((c - 1 + i) % n) + 1
  local st = redis.call('HMGET', KEYS[idx + 1], 'until', 'fails')
  local u = tonumber(st[1])
  if u == nil or (u >= 0 and u <= now) then
    return {idx, tonumber(st[2]) or 0}
  end
end
return {0, 0}
