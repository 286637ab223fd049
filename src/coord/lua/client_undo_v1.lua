-- keygate client undo v1: gives back what client_v1.lua charged for a request that the key side
-- (acquire_v6.lua) then refused, so a refusal costs the client nothing: one request on rpm and
-- rpd (their GCRA cursors move back one period's share) and the budget reserve.
-- KEYS[1]  client hash (see client_v1.lua)
-- ARGV[1..2] client rpm, rpd (0 = no limit), ARGV[3] reserve in micros taken ('0' = none)
-- Returns 1. Read by coord::redis::RedisStore::acquire.
local MIN, DAY = 60000, 86400000
local function back(field, period, limit)
  if limit > 0 then
    local tat = tonumber(redis.call('HGET', KEYS[1], field))
    if tat then redis.call('HSET', KEYS[1], field, tat - period / limit) end
  end
end
back('tat_rpm', MIN, tonumber(ARGV[1]))
back('tat_rpd', DAY, tonumber(ARGV[2]))
if ARGV[3] ~= '0' and ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[1], 'spent_micros', '-' .. ARGV[3])
end
return 1
