-- Adds a batch of one tenant's key usage: per key and UTC day, allowed and denied counts in
-- `base usage:<key id>:<day>` (hash `a`, `d`; expires with the retention), and each key's last
-- use in the sorted set KEYS[1] (score: microseconds), raised only, never lowered (compared
-- here rather than ZADD GT, which needs Redis 6.2). Key records are not touched.
-- KEYS[1] tenant `used` set. ARGV: base, n, then per delta: key id, day, allowed, denied,
-- last used (microseconds), expiry (unix seconds).
-- The last ARGV is the caller's deadline in microseconds: a write that reaches Redis after
-- its caller gave up (a paused or overloaded Redis) is refused, so a timed-out call never
-- applies later.
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base = ARGV[1]
for i = 0, tonumber(ARGV[2]) - 1 do
  local o = 3 + 6 * i
  local kid, used = ARGV[o], ARGV[o + 4]
  local rec = base .. 'usage:' .. kid .. ':' .. ARGV[o + 1]
  if ARGV[o + 2] ~= '0' then redis.call('HINCRBY', rec, 'a', ARGV[o + 2]) end
  if ARGV[o + 3] ~= '0' then redis.call('HINCRBY', rec, 'd', ARGV[o + 3]) end
  redis.call('EXPIREAT', rec, ARGV[o + 5])
  local cur = redis.call('ZSCORE', KEYS[1], kid)
  if not cur or tonumber(cur) < tonumber(used) then redis.call('ZADD', KEYS[1], used, kid) end
end
return {'ok'}
