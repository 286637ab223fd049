-- keygate release v5: the end of a request that got an answer from its key. Off the client's path.
-- On the service's slot; the client's tokens and spend go to its own slot (client_release_v1.lua).
-- KEYS[1] service leases zset, KEYS[2] key hash (see acquire_v6.lua)
-- ARGV[1] lease member ("<key id>:<lease id>")
-- ARGV[2] success: 1 resets the key's failure count, backoff step and half-open state
-- ARGV[3] tokens used (0 = unknown)
-- ARGV[4] cost in integer micros (0 = unknown), taken from the key's live balance with HINCRBY
-- ARGV[5] key tpm limit (0 = none)
-- ARGV[6] key's balance in the database, integer micros ('' = none): seeds the live balance on
--         first use
-- ARGV[7] ms from sending to the answer's head ('' = the key was not observed: nothing counted)
-- ARGV[8] latency time constant ms, ARGV[9] success-rate time constant ms
-- ARGV[10] the answer's HTTP status ('' = unknown): an answer that was not a success counts as
--         `sc:<status>`
-- Statistics (taken by take_stats_v2): st_req, st_ok, st_f4 (an answer that was not a success),
-- st_tok, st_cost. A debit that takes the live balance to zero or below puts the key out as
-- `exhausted` in the same step.
-- Returns {released, live balance in micros or -1, exhausted 1|0}. Read by
-- coord::redis::RedisStore::release.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MIN = 60000
-- Records one observation of the key for the latency and success_rate strategies: a peak-EWMA
-- of latency (a slower answer counts at once; faster ones pull it down with time constant
-- `tau`), and decayed counts of answers and attempts (time constant `tau_sr`). The same
-- arithmetic as coord::observe in Rust.
local function observe(h, rtt, ok, tau, tau_sr)
  local f = redis.call('HMGET', h, 'lat', 'lat_t', 'sr_ok', 'sr_n', 'sr_t')
  if rtt then
    local lat = tonumber(f[1])
    if lat == nil or rtt > lat then
      lat = rtt
    else
      local w = math.exp(-math.max(now - (tonumber(f[2]) or now), 0) / tau)
      lat = lat * w + rtt * (1 - w)
    end
    redis.call('HSET', h, 'lat', lat, 'lat_t', now)
  end
  local w = math.exp(-math.max(now - (tonumber(f[5]) or now), 0) / tau_sr)
  local n = (tonumber(f[4]) or 0) * w + 1
  local good = (tonumber(f[3]) or 0) * w + (ok and 1 or 0)
  redis.call('HSET', h, 'sr_ok', good, 'sr_n', n, 'sr_t', now)
end
local released = redis.call('ZREM', KEYS[1], ARGV[1])
if released == 1 and (tonumber(redis.call('HGET', KEYS[2], 'inflight') or '0') or 0) > 0 then
  redis.call('HINCRBY', KEYS[2], 'inflight', -1)
end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[2], 'fails', 0, 'cool_n', 0, 'halfopen', 0, 'probe', 0)
  local u = tonumber(redis.call('HGET', KEYS[2], 'until') or '0') or 0
  if u > 0 and u <= now then redis.call('HSET', KEYS[2], 'until', 0) end
end
if ARGV[7] ~= '' then
  -- The key answered: a good answer for its success rate, whatever the status it passed on.
  observe(KEYS[2], tonumber(ARGV[7]), true, tonumber(ARGV[8]), tonumber(ARGV[9]))
  redis.call('HINCRBY', KEYS[2], 'st_req', 1)
  if ARGV[2] == '1' then
    redis.call('HINCRBY', KEYS[2], 'st_ok', 1)
  else
    redis.call('HINCRBY', KEYS[2], 'st_f4', 1)
    if ARGV[10] and ARGV[10] ~= '' then redis.call('HINCRBY', KEYS[2], 'sc:' .. ARGV[10], 1) end
  end
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
if tokens > 0 then redis.call('HINCRBY', KEYS[2], 'st_tok', ARGV[3]) end
local bal = -1
local exhausted = 0
local cost = tonumber(ARGV[4])
if cost > 0 then redis.call('HINCRBY', KEYS[2], 'st_cost', ARGV[4]) end
if cost > 0 and ARGV[6] ~= '' then
  redis.call('HSETNX', KEYS[2], 'bal_micros', ARGV[6])
  -- The decrement goes as the caller's digits, not as a Lua number, which Redis would format
  -- with %.14g (and an exponent) past 14 digits.
  bal = redis.call('HINCRBY', KEYS[2], 'bal_micros', '-' .. ARGV[4])
  if bal <= 0 and redis.call('HGET', KEYS[2], 'until') ~= '-1' then
    redis.call('HSET', KEYS[2], 'until', -1, 'reason', 'exhausted')
    exhausted = 1
  end
end
return {released, tostring(bal), exhausted}
