-- keygate acquire with client v1: client_v1.lua and acquire_v6.lua in one call, on one primary
-- only (a single Redis or a Sentinel's: the client's hash and the service's keys are in different
-- cluster slots). Composed at start (coord::redis::compose): the two scripts, and
-- client_undo_v1.lua, run here as the local functions client, acquire and client_undo, each with
-- its own KEYS and ARGV. One call instead of two per request whose access key has limits or a
-- budget: a priced request's acquire costs the server one script call, and the request one round
-- trip, like an unpriced one.
-- KEYS[1]     client_v1's KEYS[1];  KEYS[2..]   acquire_v6's KEYS
-- ARGV[1..6]  client_v1's ARGV;     ARGV[7..20] acquire_v6's ARGV
-- Returns acquire_v6's six values, then client_v1's five. The client is asked first: when it
-- refuses, the key side is not asked (there is nothing to give back), but a service backing off
-- still answers first, as acquire_v6 would ({4, ..., retry_after_ms, -1}; otherwise the key side
-- reads {0, 0, 0, 0, 0, -1}). When the key side grants nothing, the client's charge is given back
-- in the same call. Read by coord::redis::RedisStore::acquire.
local kk = {}
for i = 2, #KEYS do kk[i - 1] = KEYS[i] end
local c = client({KEYS[1]}, {unpack(ARGV, 1, 6)})
local k
if c[1] ~= 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local backoff = tonumber(redis.call('HGET', kk[1], 'backoff') or '0') or 0
  if backoff > now then k = {4, 0, 0, 0, backoff - now, -1} else k = {0, 0, 0, 0, 0, -1} end
else
  k = acquire(kk, {unpack(ARGV, 7, 20)})
  if k[1] ~= 1 then
    client_undo({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[4] ~= '' and ARGV[6] or '0'})
  end
end
return {k[1], k[2], k[3], k[4], k[5], k[6], c[1], c[2], c[3], c[4], c[5]}
