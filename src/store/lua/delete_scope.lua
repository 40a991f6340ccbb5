-- Deletes a scope if its version and the exact set of keys holding it (each at a version)
-- are what the caller saw; removes it from those keys, bumping their versions. The service
-- gives at most DETACH_BATCH keys (src/store/mod.rs): a scope held by more is first taken
-- from the others by detach_scope.lua, so the script's time does not grow with them.
-- KEYS[1] tenant scope set. ARGV: base, scope id, expected version ('' = any), now,
-- n holders, then key id and version for each holder.
-- Every change is published on `<prefix>:changes` ("k:<key id>", "s:<tenant>:<scope id>"),
-- atomically with it, so every replica's cache drops what changed.
-- Then the audit event's three ARGV (audit.lua).
-- The last ARGV is the caller's deadline in microseconds: a write that reaches Redis after
-- its caller gave up (a paused or overloaded Redis) is refused, so a timed-out call never
-- applies later.
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, sid = ARGV[1], ARGV[2]
if not judged(base) then return {'stale'} end
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local tenant = string.match(base, '{(.*)}')
local rec = base .. 'scope:' .. sid
local cur = redis.call('HGET', rec, 'v')
if not cur then return {'notfound'} end
if ARGV[3] ~= '' and cur ~= ARGV[3] then return {'conflict', cur} end
local holders = base .. 'holders:' .. sid
local n = tonumber(ARGV[5])
-- Counted before they are read: a scope that gained holders is refused without reading them.
if redis.call('ZCARD', holders) ~= n then return {'users'} end
local members = redis.call('ZRANGE', holders, 0, -1)
local expected = {}
for i = 0, n - 1 do expected[ARGV[6 + 2 * i]] = ARGV[7 + 2 * i] end
for _, kid in ipairs(members) do
  local v = redis.call('HGET', base .. 'key:' .. kid, 'v')
  if not expected[kid] or v ~= expected[kid] then return {'users'} end
end
for _, kid in ipairs(members) do detach(base, chan, sid, kid, ARGV[4]) end
redis.call('DEL', holders)
-- Its member bindings go with it (unbind.lua keeps the indexes).
local mrec = base .. 'members:' .. sid
unbind(base, sid, mrec)
if redis.call('DEL', mrec) == 1 then redis.call('PUBLISH', chan, 'm:' .. tenant .. ':' .. sid) end
local folded = redis.call('HGET', rec, 'folded')
if folded then redis.call('HDEL', base .. 'labels', folded) end
redis.call('DEL', rec)
redis.call('ZREM', KEYS[1], sid)
redis.call('PUBLISH', chan, 's:' .. tenant .. ':' .. sid)
audit(base)
return {'ok'}
