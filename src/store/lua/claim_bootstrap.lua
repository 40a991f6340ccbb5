-- Makes the key the bootstrap admin key unless one was made before (marker in the tenant).
-- KEYS[1] tenant key set. ARGV: base, key id, version, scope ids, updated, body.
-- Then the audit event's three ARGV (audit.lua).
-- The last ARGV is the caller's deadline in microseconds: a write that reaches Redis after
-- its caller gave up (a paused or overloaded Redis) is refused, so a timed-out call never
-- applies later.
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, kid = ARGV[1], ARGV[2]
if not judged(base) then return {'stale'} end
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local marker = base .. 'bootstrap'
local existing = redis.call('GET', marker)
if existing then return {'existing', existing} end
local rec = base .. 'key:' .. kid
if redis.call('EXISTS', rec) == 1 then return {'exists'} end
redis.call('HSET', rec, 'v', ARGV[3], 'scopes', ARGV[4], 'updated', ARGV[5], 'body', ARGV[6])
redis.call('ZADD', KEYS[1], 0, kid)
for sid in string.gmatch(ARGV[4], '[^,]+') do redis.call('ZADD', base .. 'holders:' .. sid, 0, kid) end
redis.call('SET', marker, kid)
redis.call('PUBLISH', chan, 'k:' .. kid)
audit(base)
return {'ok'}
