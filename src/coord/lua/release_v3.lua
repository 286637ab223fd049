-- keygate release v3: the end of a request that got an answer from its key. Off the client's path.
-- KEYS[1] service leases zset, KEYS[2] key hash, KEYS[3] client hash (see acquire_v3.lua)
-- ARGV[1] lease member ("<key id>:<lease id>")
-- ARGV[2] success: 1 resets the key's failure count, backoff step and half-open state
-- ARGV[3] tokens used (0 = unknown)
-- ARGV[4] cost in integer micros (0 = unknown), taken from the key's live balance with HINCRBY
-- ARGV[5] key tpm limit (0 = none), ARGV[6] client tpm limit (0 = none)
-- ARGV[7] key's balance in the database, integer micros ('' = none): seeds the live balance on
--         first use
-- Returns {released, live balance in micros or -1}. Read by coord::redis::RedisStore::release.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MIN = 60000
local released = redis.call('ZREM', KEYS[1], ARGV[1])
if released == 1 and (tonumber(redis.call('HGET', KEYS[2], 'inflight') or '0') or 0) > 0 then
  redis.call('HINCRBY', KEYS[2], 'inflight', -1)
end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[2], 'fails', 0, 'cool_n', 0, 'halfopen', 0, 'probe', 0)
  local u = tonumber(redis.call('HGET', KEYS[2], 'until') or '0') or 0
  if u > 0 and u <= now then redis.call('HSET', KEYS[2], 'until', 0) end
end
local tokens = tonumber(ARGV[3])
local function add_tokens(h, limit)
  if tokens > 0 and limit > 0 then
    local T = MIN / limit
    local tat = math.max(tonumber(redis.call('HGET', h, 'tat_tpm') or '0') or 0, now)
    redis.call('HSET', h, 'tat_tpm', tat + tokens * T)
  end
end
add_tokens(KEYS[2], tonumber(ARGV[5]))
add_tokens(KEYS[3], tonumber(ARGV[6]))
local bal = -1
local cost = tonumber(ARGV[4])
if cost > 0 and ARGV[7] ~= '' then
  redis.call('HSETNX', KEYS[2], 'bal_micros', ARGV[7])
  -- The decrement goes as the caller's digits, not as a Lua number, which Redis would format
  -- with %.14g (and an exponent) past 14 digits.
  bal = redis.call('HINCRBY', KEYS[2], 'bal_micros', '-' .. ARGV[4])
end
return {released, tostring(bal)}
