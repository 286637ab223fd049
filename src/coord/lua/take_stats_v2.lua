-- keygate take_stats v2: the statistics keys gathered since they were last taken, and their live
-- balances, for the flush to the database. Each counter is decremented by what is returned, in
-- the same step, so replicas flushing at once never count a request twice.
-- KEYS: key hashes, all of one service (one slot; see acquire_v6.lua). v2: only the key names
-- changed.
-- Returns one {st_req, st_ok, st_f4, st_f5, st_fn, st_tok, st_cost, bal_micros or '', last,
-- failures by status as "status=n,..."} per key, as strings (the `sc:<status>` fields, taken the
-- same way). Read by coord::redis::RedisStore::take_stats.
local out = {}
local fields = {'st_req', 'st_ok', 'st_f4', 'st_f5', 'st_fn', 'st_tok', 'st_cost'}
for i, h in ipairs(KEYS) do
  local row = {}
  local v = redis.call('HMGET', h, unpack(fields))
  for j, f in ipairs(fields) do
    local n = v[j] or '0'
    if n ~= '0' then redis.call('HINCRBY', h, f, '-' .. n) end
    row[j] = n
  end
  local extra = redis.call('HMGET', h, 'bal_micros', 'last')
  row[8] = extra[1] or ''
  row[9] = extra[2] or '0'
  local codes = {}
  local all = redis.call('HGETALL', h)
  for j = 1, #all, 2 do
    local f, n = all[j], all[j + 1]
    if string.sub(f, 1, 3) == 'sc:' and n ~= '0' then
      redis.call('HINCRBY', h, f, '-' .. n)
      codes[#codes + 1] = string.sub(f, 4) .. '=' .. n
    end
  end
  row[10] = table.concat(codes, ',')
  out[i] = row
end
return out
