-- keygate client release v1: the client's share of a release (release_v5.lua does the key's),
-- on the client's slot: tokens against its tpm limit and the settlement of its budget.
-- KEYS[1]  client hash (see client_v1.lua)
-- ARGV[1]  tokens used (0 = unknown), ARGV[2] client tpm limit (0 = none)
-- ARGV[3]  micros to add to the client's spend (cost minus what acquire set aside; '' = none)
-- ARGV[4]  what the database says the client spent (seeds spent_micros when absent)
-- Returns 1. Read by coord::redis::RedisStore::release.
local tokens, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if tokens > 0 and limit > 0 then
  -- The clock only for the tpm limit: a budget's settlement needs none.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local tat = math.max(tonumber(redis.call('HGET', KEYS[1], 'tat_tpm') or '0') or 0, now)
  redis.call('HSET', KEYS[1], 'tat_tpm', tat + tokens * 60000 / limit)
end
if ARGV[3] ~= '' and ARGV[3] ~= '0' then
  redis.call('HSETNX', KEYS[1], 'spent_micros', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'spent_micros', ARGV[3])
end
return 1
