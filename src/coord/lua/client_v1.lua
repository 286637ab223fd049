-- keygate client v1: an access key's rate limits and budget, on the client's own slot (hash tag
-- `{c<access key id>}`). Runs beside acquire_v6.lua (the key choice, on the service's slot) on
-- the first attempt of a request whose access key has limits; each call is atomic, so the limits
-- are exact across replicas. A request refused by the other side gives back what this took
-- (client_undo_v1.lua).
-- KEYS[1]  client hash {tat_rpm, tat_rpd, tat_tpm, spent_micros}
-- ARGV[1..3] client rpm, rpd, tpm (0 = no limit)
-- ARGV[4]  client budget in micros ('' = none); field spent_micros is what it spent
-- ARGV[5]  what the database says the client spent (seeds spent_micros when absent)
-- ARGV[6]  micros set aside from the budget for this request (its estimated price; 0 = none)
-- Returns {code, retry_after_ms or spent, rpm_remaining, rpd_remaining, tpm_remaining}:
--   code 1 admitted and charged (one request on rpm and rpd, the reserve on the budget),
--   2 over a rate limit (retry_after_ms), 5 the budget does not cover the request (what it
--   spent). Remaining: -1 = no limit. Read by coord::redis::RedisStore::acquire.
local MIN, DAY = 60000, 86400000
local c_rpm, c_rpd, c_tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
-- The clock is read only for rate limits: a budget alone needs none. Every call a script makes
-- costs Redis a few µs, and this one runs on every request of a priced access key.
local now = 0
if c_rpm > 0 or c_rpd > 0 or c_tpm > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function gcra(tat, period, limit, cost)
  -- Generic cell rate: `limit` per `period`. Returns allowed, new tat, retry after, remaining.
  local T = period / limit
  local base = math.max(tonumber(tat) or 0, now)
  local new = base + cost * T
  if cost == 0 then
    -- admission only: at least one unit must be left
    if base - now <= period - T then
      return true, base, 0, math.floor((period - (base - now)) / T)
    end
    return false, base, math.ceil(base - now - period + T), 0
  end
  if new - now > period then
    return false, base, math.ceil(new - now - period), 0
  end
  return true, new, 0, math.floor((period - (new - now)) / T)
end

local rem_rpm, rem_rpd, rem_tpm = -1, -1, -1
local new_rpm, new_rpd
local cl = redis.call('HMGET', KEYS[1], 'tat_rpm', 'tat_rpd', 'tat_tpm', 'spent_micros')
local worst = 0
local ok, ra
if c_rpm > 0 then
  ok, new_rpm, ra, rem_rpm = gcra(cl[1], MIN, c_rpm, 1)
  if not ok then worst = math.max(worst, ra) end
end
if c_rpd > 0 then
  ok, new_rpd, ra, rem_rpd = gcra(cl[2], DAY, c_rpd, 1)
  if not ok then worst = math.max(worst, ra) end
end
if c_tpm > 0 then
  local _
  ok, _, ra, rem_tpm = gcra(cl[3], MIN, c_tpm, 0)
  if not ok then worst = math.max(worst, ra) end
end
if worst > 0 then
  return {2, worst, rem_rpm, rem_rpd, rem_tpm}
end
local reserve = tonumber(ARGV[6]) or 0
if ARGV[4] ~= '' then
  -- A budget admits a request while what was spent plus what this one is expected to cost fits
  -- (a spent budget, or one of 0, admits nothing). The reserve is taken now, so concurrent
  -- requests cannot all squeeze into the same remainder.
  -- Read with the rate fields above; seeded from the database only when absent.
  local spent = cl[4]
  if not spent then
    redis.call('HSETNX', KEYS[1], 'spent_micros', ARGV[5])
    spent = ARGV[5]
  end
  spent = tonumber(spent) or 0
  local budget = tonumber(ARGV[4])
  if spent + reserve > budget or spent >= budget then
    return {5, spent, rem_rpm, rem_rpd, rem_tpm}
  end
  if reserve > 0 then redis.call('HINCRBY', KEYS[1], 'spent_micros', reserve) end
end
if new_rpm then redis.call('HSET', KEYS[1], 'tat_rpm', new_rpm) end
if new_rpd then redis.call('HSET', KEYS[1], 'tat_rpd', new_rpd) end
redis.call('PEXPIRE', KEYS[1], DAY * 2)
return {1, 0, rem_rpm, rem_rpd, rem_tpm}
