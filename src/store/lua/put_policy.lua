-- Writes a tenant's key policy `<base>policy` (hash: `v` version, `body` JSON) if it is at the
-- expected version ('0': none stored yet), with its audit event.
-- KEYS[1] the policy hash. ARGV: base, expected version, new version, body, then the audit
-- event's three ARGV (audit.lua), then the caller's deadline in microseconds.
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, expected = ARGV[1], ARGV[2]
if not judged(base) then return {'stale'} end
local cur = redis.call('HGET', KEYS[1], 'v') or '0'
if cur ~= expected then return {'conflict', cur} end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'body', ARGV[4])
audit(base)
return {'ok'}
