-- Replaces the member bindings of a scope and the subject -> scopes and role -> scopes
-- indexes (`bound:s:<subject>`, `bound:r:<role>` sets of scope ids).
-- KEYS[1] the scope's members hash. ARGV: base, scope id, expected version ('0' = never
-- bound), new version, stored ('1': the scope record must exist), n subjects, subjects...,
-- n roles, roles...
-- Publishes "m:<tenant>:<scope id>" on `<prefix>:changes`, atomically with the change.
-- Then the audit event's three ARGV (audit.lua) and the caller's deadline (microseconds).
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, sid = ARGV[1], ARGV[2]
if not judged(base) then return {'stale'} end
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local tenant = string.match(base, '{(.*)}')
if ARGV[5] == '1' and redis.call('EXISTS', base .. 'scope:' .. sid) == 0 then return {'notfound'} end
local cur = redis.call('HGET', KEYS[1], 'v') or '0'
if cur ~= ARGV[3] then return {'conflict', cur} end
unbind(base, sid, KEYS[1])
local ns = tonumber(ARGV[6])
local subjects = {}
for i = 1, ns do
  subjects[i] = ARGV[6 + i]
  redis.call('SADD', base .. 'bound:s:' .. ARGV[6 + i], sid)
end
local nr = tonumber(ARGV[7 + ns])
local roles = {}
for i = 1, nr do
  roles[i] = ARGV[7 + ns + i]
  redis.call('SADD', base .. 'bound:r:' .. ARGV[7 + ns + i], sid)
end
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'subjects', table.concat(subjects, '\n'), 'roles', table.concat(roles, '\n'))
redis.call('PUBLISH', chan, 'm:' .. tenant .. ':' .. sid)
audit(base)
return {'ok'}
