-- keygate release with client v1: release_v5.lua and client_release_v1.lua in one call, on one
-- primary only (a single Redis or a Sentinel's: the key's and the client's hashes are in different
-- cluster slots). Composed at start (coord::redis::compose): the two scripts run here as the local
-- functions release and client_release, each with its own KEYS and ARGV. One call instead of two
-- per release of a request whose access key has a budget or a tpm limit.
-- KEYS[1..2]  release_v5's KEYS;    KEYS[3]      client_release_v1's KEYS[1]
-- ARGV[1..10] release_v5's ARGV;    ARGV[11..14] client_release_v1's ARGV
-- Returns release_v5's three values, then 1 when the client's share failed (it is the key's
-- release either way: the caller only says so), else 0. Read by coord::redis::RedisStore::release.
local r = release({KEYS[1], KEYS[2]}, {unpack(ARGV, 1, 10)})
local ok = pcall(client_release, {KEYS[3]}, {unpack(ARGV, 11, 14)})
return {r[1], r[2], r[3], ok and 0 or 1}
