-- keygate report v1: record the outcome of one attempt on a key.
-- KEYS[1] per-key state hash (see select_rr_v1.lua)
-- ARGV[1] kind: 'invalid' | 'cool' | 'fail' | 'ok' | 'clear'
-- ARGV[2] ms to stay out of rotation ('cool'; 'fail' once the threshold is reached)
-- ARGV[3] failure threshold ('fail')
-- ARGV[4] reason text stored with the state
-- Returns {fails, until}: consecutive failures after this report and the ms epoch the key is out
-- until (0 = in rotation, -1 = until re-enabled). Read into coord::Report.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = ARGV[1]
if kind == 'clear' then
  redis.call('DEL', KEYS[1])
  return {0, 0}
elseif kind == 'invalid' then
  redis.call('HSET', KEYS[1], 'until', -1, 'reason', ARGV[4])
  return {tonumber(redis.call('HGET', KEYS[1], 'fails')) or 0, -1}
elseif kind == 'cool' then
  local u = now + tonumber(ARGV[2])
  local cur = tonumber(redis.call('HGET', KEYS[1], 'until'))
  if cur == -1 then return {0, -1} end
  if cur ~= nil and cur > u then u = cur end
  redis.call('HSET', KEYS[1], 'until', u, 'reason', ARGV[4])
  return {tonumber(redis.call('HGET', KEYS[1], 'fails')) or 0, u}
elseif kind == 'fail' then
  local f = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  local cur = tonumber(redis.call('HGET', KEYS[1], 'until'))
  if cur == -1 then return {f, -1} end
  if f >= tonumber(ARGV[3]) then
    local u = now + tonumber(ARGV[2])
    redis.call('HSET', KEYS[1], 'until', u, 'reason', ARGV[4])
    return {f, u}
  end
  return {f, cur or 0}
elseif kind == 'ok' then
  redis.call('HSET', KEYS[1], 'fails', 0)
  local cur = tonumber(redis.call('HGET', KEYS[1], 'until'))
  return {0, cur or 0}
end
return redis.error_reply('unknown report kind ' .. tostring(kind))
