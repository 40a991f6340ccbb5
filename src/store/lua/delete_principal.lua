-- Deletes a registered principal, marking its subject as gone (keys naming it as their owner
-- are denied until it is registered again). KEYS[1] the tenant's principal set. ARGV: base,
-- subject, expected version ('' = any).
-- Publishes "p:<tenant>:<subject>" on `<prefix>:changes`, atomically with the change.
-- Then the audit event's three ARGV (audit.lua) and the caller's deadline (microseconds).
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, subject, expected = ARGV[1], ARGV[2], ARGV[3]
if not judged(base) then return {'stale'} end
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local tenant = string.match(base, '{(.*)}')
local rec = base .. 'principal:' .. subject
local cur = redis.call('HGET', rec, 'v')
if not cur then return {'notfound'} end
if expected ~= '' and cur ~= expected then return {'conflict', cur} end
redis.call('DEL', rec)
redis.call('ZREM', KEYS[1], subject)
redis.call('SADD', base .. 'gone', subject)
redis.call('PUBLISH', chan, 'p:' .. tenant .. ':' .. subject)
audit(base)
return {'ok'}
