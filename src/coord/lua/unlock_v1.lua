-- keygate unlock v1: releases a lock taken with `SET NX PX` only if the caller still holds it
-- (a holder whose lock expired must not release the lock someone else has taken since).
-- KEYS[1] lock key; ARGV[1] the holder's token
-- Returns 1 if the lock was released, 0 if it was not held by this token. Read by RedisStore::unlock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
