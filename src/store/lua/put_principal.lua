-- Registers or replaces a principal. KEYS[1] the tenant's principal set. ARGV: base, subject,
-- expected version ('' = register: refused if registered; a deleted one may come back),
-- new version, roles (newline-separated), body JSON.
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
if expected == '' then
  if cur then return {'exists'} end
else
  if not cur then return {'notfound'} end
  if cur ~= expected then return {'conflict', cur} end
end
redis.call('SREM', base .. 'gone', subject)
redis.call('ZADD', KEYS[1], 0, subject)
redis.call('HSET', rec, 'v', ARGV[4], 'roles', ARGV[5], 'body', ARGV[6])
redis.call('PUBLISH', chan, 'p:' .. tenant .. ':' .. subject)
audit(base)
return {'ok'}
