-- keygate acquire v6: one call per attempt, on the service's slot. Picks a key of the service (by
-- session affinity when the request has a session, else by the strategy) among the usable ones,
-- and takes a lease on it. The client's limits and budget live in another slot (client_v1.lua):
-- a request whose access key has any is checked there concurrently (coord::redis).
--
-- Every key touched is declared and shares the hash tag `{s<service id>}`, so the call is valid on
-- Redis Cluster (one slot) and the same on a single Redis.
-- KEYS[1]      service hash      {rr = cursor, backoff = ms epoch of an upstream-wide backoff}
-- KEYS[2]      service leases    zset, member "<key id>:<lease id>", score = lease expiry (ms)
-- KEYS[3]      session binding   string: the key id a session is bound to (unused if no session)
-- KEYS[3 + i]  key hash of the i-th key of the service (list order, i = 1..n):
--              {until, reason, fails, cool_n, inflight, last, cw, probe, halfopen, bal_micros,
--              tat_rpm, tat_tpm, lat, lat_t, sr_ok, sr_n}; until: 0 = in rotation, -1 = out until
--              re-enabled, else ms epoch. lat is the peak-EWMA latency (ms) at lat_t; sr_ok/sr_n
--              are decayed counts of answers and attempts (release_v5, report_v4).
-- Money is integer micro-units (1 unit = 1000000) everywhere here; amounts stay below 2^53, so
-- Lua numbers hold them exactly.
-- ARGV[1]  strategy: rr | weighted | least_used | random | balance | latency | success_rate | cost
-- ARGV[2]  per-key concurrency cap (0 = none)
-- ARGV[3]  lease ttl ms
-- ARGV[4]  lease id
-- ARGV[5]  request price in micros (0 = unknown)
-- ARGV[6]  random integer in [0, 2^32) (random, latency and success_rate strategies)
-- ARGV[7]  half-open probe lock ms
-- ARGV[8]  unused ('': v5 passed the key ids here; v6 reads each from its key's name, KEYS[3 + i]
--          ends in ':k:<id>', and only for the keys it looks at)
-- ARGV[9]  keys with settings other than the defaults (weight 1, no rpm/tpm, no balance, cost
--          factor 1): ";index:weight:rpm:tpm:balance:cost;..." (1-based index, 0 = no limit,
--          balance in micros or '' = none, cost factor in millionths or '' = 1000000)
-- ARGV[10] key ids this request already tried, comma-separated
-- ARGV[11] session: 1 = bind by KEYS[3], 0 = no session
-- ARGV[12] where an unbound session starts scanning (0-based index, from a hash of the session)
-- ARGV[13] session binding ttl ms
-- ARGV[14] latency decay time constant ms (peak-EWMA)
--
-- Returns {code, index, fails, probe, retry_after_ms, cursor_before}
-- Round robin takes the first usable key from the cursor on and moves the cursor past it
-- (cursor_before: where it was, so a grant undone because the client was refused can put it
-- back; -1 when the call did not move it).
-- A session keeps its key while the key is usable; otherwise the first usable key after it (in
-- list order) takes over, so every replica moves it to the same key.
--   code 1 granted (index 1-based), 3 every usable key at its cap, 4 service backing off
--   (upstream-wide 429), 0 no usable key.
-- Read by coord::redis::RedisStore::acquire into coord::Acquire.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MIN, DAY = 60000, 86400000
-- The key ids are read from the key names on demand: round robin looks at one key in the common
-- case, and building a table of every id on each call cost more than the rest of the call.
local n = #KEYS - 3
if n <= 0 then return {0, 0, 0, 0, 0, -1} end
local id_at = {}
local function id_of(i)
  local id = id_at[i]
  if id == nil then
    id = string.match(KEYS[3 + i], ':k:(%d+)$')
    id_at[i] = id
  end
  return id
end
local DEFAULT = {w = 1, rpm = 0, tpm = 0, cf = 1000000}
local OV = ARGV[9]
local function to_spec(w, rpm, tpm, bal, cf)
  return {w = tonumber(w), rpm = tonumber(rpm), tpm = tonumber(tpm), bal = tonumber(bal),
    cf = tonumber(cf) or 1000000}
end
-- Round robin and sessions usually read one key: its settings are looked up alone (a find in
-- C over the string), not parsed for all n keys on every call. Strategies that read every key
-- parse them all once.
local spec = {}
local lazy = ARGV[1] == 'rr' or ARGV[11] == '1'
if not lazy then
  for idx, w, rpm, tpm, bal, cf in string.gmatch(OV, ';(%d+):(%d+):(%d+):(%d+):(%-?%d*):(%d*)') do
    spec[tonumber(idx)] = to_spec(w, rpm, tpm, bal, cf)
  end
end
local function spec_of(i)
  local sp = spec[i]
  if sp == nil and lazy then
    -- A plain find of ";<i>:" (only an entry starts with ';'), then a match anchored there: an
    -- unanchored pattern is tried at every position of the string, about 8 µs for 100 keys.
    local at = string.find(OV, ';' .. i .. ':', 1, true)
    local w, rpm, tpm, bal, cf
    if at then
      w, rpm, tpm, bal, cf = string.match(OV, '^;%d+:(%d+):(%d+):(%d+):(%-?%d*):(%d*)', at)
    end
    sp = w and to_spec(w, rpm, tpm, bal, cf) or DEFAULT
    spec[i] = sp
  end
  return sp or DEFAULT
end
local excluded = {}
local any_excluded = false
for id in string.gmatch(ARGV[10], '[^,]+') do
  excluded[id] = true
  any_excluded = true
end
local function key_hash(i) return KEYS[3 + i] end

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
  return {4, 0, 0, 0, backoff - now, -1}
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  local index_of = {}
  for i = 1, n do index_of[id_of(i)] = i end
  for _, m in ipairs(expired) do
    -- A lease of a key no longer in the service's list is just dropped (the key's state no
    -- longer matters to anyone).
    local i = index_of[string.match(m, '^(%d+):') or '']
    if i then
      local h = key_hash(i)
      if (tonumber(redis.call('HGET', h, 'inflight') or '0') or 0) > 0 then
        redis.call('HINCRBY', h, 'inflight', -1)
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end

local strategy = ARGV[1]
local cap = tonumber(ARGV[2])
local price = tonumber(ARGV[5])
local at_cap = false
local cursor_before = -1

-- Evaluates key i: a candidate table when it is usable now, else nil.
local function eval(i)
  if any_excluded and excluded[id_of(i)] then return nil end
  local sp = spec_of(i)
  local f = redis.call('HMGET', key_hash(i), 'until', 'fails', 'inflight', 'last', 'cw', 'probe',
    'halfopen', 'bal_micros', 'tat_rpm', 'tat_tpm', 'lat', 'lat_t', 'sr_ok', 'sr_n')
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
    cw = tonumber(f[5]) or 0, w = sp.w, bal = bal, probe = probe, cf = sp.cf,
    new_krpm = new_krpm, lat = tonumber(f[11]) or 0, lat_t = tonumber(f[12]) or now,
    sr_ok = tonumber(f[13]) or 0, sr_n = tonumber(f[14]) or 0}
end

local rnd = tonumber(ARGV[6])
-- First usable key scanning from 0-based index `start`, or nil.
local function first_from(start)
  for j = 0, n - 1 do
    local c = eval((start + j) % n + 1)
    if c then return c end
  end
  return nil
end

local pick
local session = ARGV[11] == '1'
if session then
  local bound = redis.call('GET', KEYS[3])
  local at = nil
  if bound then
    for i = 1, n do if id_of(i) == bound then at = i break end end
  end
  if at then
    pick = eval(at)
    if pick == nil then pick = first_from(at) end
  else
    pick = first_from(tonumber(ARGV[12]) % n)
  end
  if pick then redis.call('SET', KEYS[3], id_of(pick.i), 'PX', tonumber(ARGV[13])) end
elseif strategy == 'rr' then
  -- Scan from the cursor and stop at the first usable key: one key read in the common case. The
  -- cursor then moves just past the key taken, so the rotation is exact, and fair among the
  -- usable keys while others are out.
  local start = tonumber(redis.call('HGET', KEYS[1], 'rr') or '0') or 0
  pick = first_from(start)
  if pick then
    cursor_before = start
    redis.call('HSET', KEYS[1], 'rr', pick.i % n)
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
    if #cand > 0 then pick = cand[(rnd % #cand) + 1] end
  elseif strategy == 'least_used' then
    for _, c in ipairs(cand) do
      if pick == nil or c.inflight < pick.inflight
        or (c.inflight == pick.inflight and c.last < pick.last) then pick = c end
    end
  elseif strategy == 'latency' then
    -- Power of two choices over peak-EWMA latency times (requests in flight + 1). The EWMA
    -- decays towards 0 while a key is not observed, so a key that was slow is tried again now
    -- and then; a key never observed costs 0 and is tried first.
    local m = #cand
    if m == 1 then
      pick = cand[1]
    elseif m > 1 then
      local a = rnd % m
      local b = (a + 1 + math.floor(rnd / m) % (m - 1)) % m
      local tau = tonumber(ARGV[14])
      local function cost(c)
        return c.lat * math.exp(-math.max(now - c.lat_t, 0) / tau) * (c.inflight + 1)
      end
      local ca, cb = cand[a + 1], cand[b + 1]
      if cost(cb) < cost(ca) then pick = cb else pick = ca end
    end
  elseif strategy == 'success_rate' then
    -- Weighted draw by the key's weight times its recent success rate squared (Laplace
    -- smoothed, so a new key starts at 1/2 and a failing one keeps a trickle of traffic).
    local total, ws = 0, {}
    for j, c in ipairs(cand) do
      local r = (c.sr_ok + 1) / (c.sr_n + 2)
      ws[j] = c.w * r * r
      total = total + ws[j]
    end
    local x = (rnd / 4294967296) * total
    for j, c in ipairs(cand) do
      x = x - ws[j]
      if x < 0 or j == #cand then pick = c break end
    end
  elseif strategy == 'cost' then
    -- The lowest cost factor; ties in round-robin order from the cursor.
    local best, cheapest = nil, {}
    for _, c in ipairs(cand) do
      if best == nil or c.cf < best then best = c.cf end
    end
    for _, c in ipairs(cand) do
      if c.cf == best then cheapest[c.i] = c end
    end
    if best ~= nil then
      local start = tonumber(redis.call('HGET', KEYS[1], 'rr') or '0') or 0
      for j = 0, n - 1 do
        pick = cheapest[(start + j) % n + 1]
        if pick then break end
      end
      cursor_before = start
      redis.call('HSET', KEYS[1], 'rr', pick.i % n)
    end
  else
    -- balance: the highest live balance first
    for _, c in ipairs(cand) do
      if pick == nil or (c.bal or -1) > (pick.bal or -1) then pick = c end
    end
  end
end

if pick == nil then
  if at_cap then return {3, 0, 0, 0, 0, -1} end
  return {0, 0, 0, 0, 0, -1}
end

local kh = key_hash(pick.i)
local kid = id_of(pick.i)
if pick.new_krpm then redis.call('HSET', kh, 'tat_rpm', pick.new_krpm) end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), kid .. ':' .. ARGV[4])
redis.call('HINCRBY', kh, 'inflight', 1)
redis.call('HSET', kh, 'last', now)
if pick.probe then redis.call('HSET', kh, 'probe', now + tonumber(ARGV[7])) end
return {1, pick.i, pick.fails, pick.probe and 1 or 0, 0, cursor_before}
