-- keygate acquire v3: one call per attempt. Checks the client's rate limits, picks a key of the
-- service by its strategy among the usable ones, charges the limits and takes a lease on the key.
--
-- KEYS[1]      service hash      {rr = cursor, backoff = ms epoch of an upstream-wide backoff}
-- KEYS[2]      service leases    zset, member "<key id>:<lease id>", score = lease expiry (ms)
-- KEYS[3]      client hash       {tat_rpm, tat_rpd, tat_tpm} of the access key (unused if no client)
-- <prefix>k:<key id>             key hashes {until, reason, fails, cool_n, inflight, last, cw,
--                                 probe, halfopen, bal_micros, tat_rpm, tat_tpm}; until: 0 = in
--                                 rotation, -1 = out until re-enabled, else ms epoch. Named from
--                                 ARGV, so Redis Cluster is not supported (one primary).
--                                 bal_micros is an integer (v2 kept a float `bal` in units; the new
--                                 field name keeps v2 and v3 replicas from reading each other's).
-- Money is integer micro-units (1 unit = 1000000) everywhere here; amounts stay below 2^53, so
-- Lua numbers hold them exactly.
-- ARGV[1]  strategy: rr | weighted | least_used | random | balance
-- ARGV[2]  per-key concurrency cap (0 = none)
-- ARGV[3]  lease ttl ms
-- ARGV[4]  lease id
-- ARGV[5]  charge client limits: 1 | 0 (0 on retries of the same request)
-- ARGV[6..8] client rpm, rpd, tpm (0 = no limit)
-- ARGV[9]  request price in micros (0 = unknown)
-- ARGV[10] random integer (for the random strategy)
-- ARGV[11] half-open probe lock ms
-- ARGV[12] key prefix
-- ARGV[13] key ids of the service, comma-separated, in list order (built once per config load)
-- ARGV[14] keys with settings other than the defaults (weight 1, no rpm/tpm, no balance):
--          "index:weight:rpm:tpm:balance;..." (1-based index, 0 = no limit, balance in micros,
--          '' = no balance)
-- ARGV[15] key ids this request already tried, comma-separated
--
-- Returns {code, index, fails, probe, retry_after_ms, rpm_remaining, rpd_remaining, tpm_remaining}
-- Round robin takes the first usable key from the cursor on and moves the cursor past it.
--   code 1 granted (index 1-based), 2 client over a limit, 3 every usable key at its cap,
--   4 service backing off (upstream-wide 429), 0 no usable key. Remaining: -1 = no limit.
-- Read by coord::redis::RedisStore::acquire into coord::Acquire.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MIN, DAY = 60000, 86400000
local ids = {}
for id in string.gmatch(ARGV[13], '[^,]+') do ids[#ids + 1] = id end
local n = #ids
if n == 0 then return {0, 0, 0, 0, 0, -1, -1, -1} end
local spec = {}
for idx, w, rpm, tpm, bal in string.gmatch(ARGV[14], '(%d+):(%d+):(%d+):(%d+):([^;]*)') do
  spec[tonumber(idx)] = {w = tonumber(w), rpm = tonumber(rpm), tpm = tonumber(tpm), bal = tonumber(bal)}
end
local DEFAULT = {w = 1, rpm = 0, tpm = 0}
local excluded = {}
for id in string.gmatch(ARGV[15], '[^,]+') do excluded[id] = true end
local function key_hash(i) return ARGV[12] .. 'k:' .. ids[i] end

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

local backoff = tonumber(redis.call('HGET', KEYS[1], 'backoff') or '0') or 0
if backoff > now then
  return {4, 0, 0, 0, backoff - now, -1, -1, -1}
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  for _, m in ipairs(expired) do
    local kid = string.match(m, '^(%d+):')
    if kid then
      local h = ARGV[12] .. 'k:' .. kid
      if (tonumber(redis.call('HGET', h, 'inflight') or '0') or 0) > 0 then
        redis.call('HINCRBY', h, 'inflight', -1)
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end

local charge = ARGV[5] == '1'
local c_rpm, c_rpd, c_tpm = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rem_rpm, rem_rpd, rem_tpm = -1, -1, -1
local new_rpm, new_rpd
if charge then
  local cl = redis.call('HMGET', KEYS[3], 'tat_rpm', 'tat_rpd', 'tat_tpm')
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
    return {2, 0, 0, 0, worst, rem_rpm, rem_rpd, rem_tpm}
  end
end

local strategy = ARGV[1]
local cap = tonumber(ARGV[2])
local price = tonumber(ARGV[9])
local at_cap = false

-- Evaluates key i: a candidate table when it is usable now, else nil.
local function eval(i)
  if excluded[ids[i]] then return nil end
  local sp = spec[i] or DEFAULT
  local f = redis.call('HMGET', key_hash(i), 'until', 'fails', 'inflight', 'last', 'cw', 'probe',
    'halfopen', 'bal_micros', 'tat_rpm', 'tat_tpm')
  local u = tonumber(f[1]) or 0
  if not (u == 0 or (u > 0 and u <= now)) then return nil end
  local probe = false
  if f[7] == '1' then
    -- half-open after a failure trip: one trial request at a time
    if (tonumber(f[6]) or 0) > now then return nil end
    probe = true
  end
  local k_rpm, k_tpm = sp.rpm, sp.tpm
  local new_krpm
  if k_rpm > 0 then
    local ok
    ok, new_krpm = gcra(f[9], MIN, k_rpm, 1)
    if not ok then return nil end
  end
  if k_tpm > 0 and not gcra(f[10], MIN, k_tpm, 0) then return nil end
  local bal = tonumber(f[8]) or sp.bal
  if strategy == 'balance' and price > 0 and bal ~= nil and bal < price then return nil end
  local inflight = tonumber(f[3]) or 0
  if cap > 0 and inflight >= cap then
    at_cap = true
    return nil
  end
  return {i = i, fails = tonumber(f[2]) or 0, inflight = inflight, last = tonumber(f[4]) or 0,
    cw = tonumber(f[5]) or 0, w = sp.w, bal = bal, probe = probe,
    new_krpm = new_krpm}
end

local pick
if strategy == 'rr' then
  -- Scan from the cursor and stop at the first usable key: one key read in the common case. The
  -- cursor then moves just past the key taken, so the rotation is exact, and fair among the
  -- usable keys while others are out.
  local start = tonumber(redis.call('HGET', KEYS[1], 'rr') or '0') or 0
  for j = 0, n - 1 do
    local i0 = (start + j) % n
    local c = eval(i0 + 1)
    if c then
      pick = c
      redis.call('HSET', KEYS[1], 'rr', (i0 + 1) % n)
      break
    end
  end
else
  local cand = {}
  for i = 1, n do
    local c = eval(i)
    if c then cand[#cand + 1] = c end
  end
  if strategy == 'weighted' then
    local total = 0
    for _, c in ipairs(cand) do
      c.cw = c.cw + c.w
      total = total + c.w
      if pick == nil or c.cw > pick.cw then pick = c end
    end
    if pick then
      pick.cw = pick.cw - total
      for _, c in ipairs(cand) do redis.call('HSET', key_hash(c.i), 'cw', c.cw) end
    end
  elseif strategy == 'random' then
    -- uniform among the usable keys
    if #cand > 0 then pick = cand[(tonumber(ARGV[10]) % #cand) + 1] end
  elseif strategy == 'least_used' then
    for _, c in ipairs(cand) do
      if pick == nil or c.inflight < pick.inflight
        or (c.inflight == pick.inflight and c.last < pick.last) then pick = c end
    end
  else
    -- balance: the highest live balance first
    for _, c in ipairs(cand) do
      if pick == nil or (c.bal or -1) > (pick.bal or -1) then pick = c end
    end
  end
end

if pick == nil then
  if at_cap then return {3, 0, 0, 0, 0, rem_rpm, rem_rpd, rem_tpm} end
  return {0, 0, 0, 0, 0, rem_rpm, rem_rpd, rem_tpm}
end

if charge then
  if new_rpm then redis.call('HSET', KEYS[3], 'tat_rpm', new_rpm) end
  if new_rpd then redis.call('HSET', KEYS[3], 'tat_rpd', new_rpd) end
  redis.call('PEXPIRE', KEYS[3], DAY * 2)
end
local kh = key_hash(pick.i)
local kid = ids[pick.i]
if pick.new_krpm then redis.call('HSET', kh, 'tat_rpm', pick.new_krpm) end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), kid .. ':' .. ARGV[4])
redis.call('HINCRBY', kh, 'inflight', 1)
redis.call('HSET', kh, 'last', now)
if pick.probe then redis.call('HSET', kh, 'probe', now + tonumber(ARGV[11])) end
return {1, pick.i, pick.fails, pick.probe and 1 or 0, 0, rem_rpm, rem_rpd, rem_tpm}
