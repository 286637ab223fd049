-- keygate report v4: an attempt failed because of its key (or the upstream). Releases the lease and
-- records the key's health; detects upstream-wide rate limits.
-- KEYS[1] service hash, KEYS[2] service leases zset, KEYS[3] key hash,
-- KEYS[4] service 429 zset (member key id, score ms of its last 429); all on the service's slot
-- (hash tag `{s<service id>}`, see acquire_v6.lua). v4: only the key names changed.
-- ARGV[1] kind: invalid | exhausted | rate_limited | failure | clear
-- ARGV[2] lease member ('' = none)
-- ARGV[3] retry-after ms from the upstream (0 = none)
-- ARGV[4] failure threshold, ARGV[5] recovery ms (failure trip), ARGV[6] backoff base ms,
-- ARGV[7] backoff max ms, ARGV[8] number of keys in the service, ARGV[9] 429 window ms,
-- ARGV[10] share of keys (percent) that makes a 429 burst upstream-wide, ARGV[11] key id
-- ARGV[12] ms the failed attempt took ('' = not timed), ARGV[13] latency time constant ms,
-- ARGV[14] success-rate time constant ms
-- ARGV[15] statistics class of the failed attempt: 4xx | 5xx | net ('' = not counted)
-- ARGV[16] the attempt's HTTP status ('' or 0 = no answer): counted as the key's `sc:<status>`
-- Returns {fails, until, service_backoff_until}: until as in acquire_v6.lua (0, -1 or ms epoch);
-- service_backoff_until 0 unless this report started an upstream-wide backoff.
-- Read by coord::redis::RedisStore::report into coord::Report.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = ARGV[1]
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
if ARGV[2] ~= '' then
  local released = redis.call('ZREM', KEYS[2], ARGV[2])
  if released == 1 and (tonumber(redis.call('HGET', KEYS[3], 'inflight') or '0') or 0) > 0 then
    redis.call('HINCRBY', KEYS[3], 'inflight', -1)
  end
end
if kind == 'clear' then
  local inflight = redis.call('HGET', KEYS[3], 'inflight')
  redis.call('DEL', KEYS[3])
  if inflight then redis.call('HSET', KEYS[3], 'inflight', inflight) end
  return {0, 0, 0}
end
-- Every fault is a failed attempt for the success rate; a slow failure (a timeout) also
-- counts as latency.
observe(KEYS[3], tonumber(ARGV[12]), false, tonumber(ARGV[13]), tonumber(ARGV[14]))
if ARGV[15] ~= '' then
  redis.call('HINCRBY', KEYS[3], 'st_req', 1)
  local field = ({['4xx'] = 'st_f4', ['5xx'] = 'st_f5', net = 'st_fn'})[ARGV[15]]
  if field then redis.call('HINCRBY', KEYS[3], field, 1) end
  redis.call('HINCRBY', KEYS[3], 'sc:' .. (ARGV[16] ~= '' and ARGV[16] or '0'), 1)
end
local u = tonumber(redis.call('HGET', KEYS[3], 'until') or '0') or 0
local fails = tonumber(redis.call('HGET', KEYS[3], 'fails') or '0') or 0
if kind == 'invalid' or kind == 'exhausted' then
  redis.call('HSET', KEYS[3], 'until', -1, 'reason', kind)
  return {fails, -1, 0}
end
if u == -1 then return {fails, -1, 0} end
local retry_after = tonumber(ARGV[3])
if kind == 'rate_limited' then
  local window = tonumber(ARGV[9])
  redis.call('ZADD', KEYS[4], now, ARGV[11])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[4], window)
  local n = tonumber(ARGV[8])
  local hit = redis.call('ZCARD', KEYS[4])
  if n >= 2 and hit * 100 >= tonumber(ARGV[10]) * n then
    -- Most keys of the service were refused within the window: the limit is upstream-wide
    -- (per IP or per account). Back off the service instead of burning every key.
    -- The backoff grows while upstream-wide limits keep coming; a quiet window resets it.
    local prev = tonumber(redis.call('HGET', KEYS[1], 'backoff') or '0') or 0
    if prev < now - window then redis.call('HSET', KEYS[1], 'backoff_n', 0) end
    local step = redis.call('HINCRBY', KEYS[1], 'backoff_n', 1)
    local dur = retry_after
    if dur <= 0 then
      dur = math.min(tonumber(ARGV[7]), tonumber(ARGV[6]) * 2 ^ (step - 1))
    end
    local b = now + dur
    redis.call('HSET', KEYS[1], 'backoff', b)
    redis.call('DEL', KEYS[4])
    return {fails, u, b}
  end
  local step = redis.call('HINCRBY', KEYS[3], 'cool_n', 1)
  local dur = retry_after
  if dur <= 0 then
    dur = math.min(tonumber(ARGV[7]), tonumber(ARGV[6]) * 2 ^ (step - 1))
  end
  local nu = math.max(u, now + dur)
  redis.call('HSET', KEYS[3], 'until', nu, 'reason', 'cooling')
  return {fails, nu, 0}
end
if kind == 'failure' then
  fails = redis.call('HINCRBY', KEYS[3], 'fails', 1)
  local halfopen = redis.call('HGET', KEYS[3], 'halfopen') == '1'
  if halfopen or fails >= tonumber(ARGV[4]) then
    local nu = now + tonumber(ARGV[5])
    redis.call('HSET', KEYS[3], 'until', nu, 'reason', 'failing', 'halfopen', 1, 'probe', 0)
    return {fails, nu, 0}
  end
  return {fails, u, 0}
end
return redis.error_reply('unknown report kind ' .. tostring(kind))
