-- Creates or replaces a key record, keeping the tenant's key set and the scope -> keys index
-- exact. Every key touched lives in the tenant's hash slot (KEYS[1] routes the call).
-- KEYS[1] tenant key set. ARGV: base, key id, expected version ('' = create), max keys,
-- new version, scope ids (comma-separated), updated, body, n stored scopes, stored scope ids...
-- Every change is published on `<prefix>:changes` ("k:<key id>", "s:<tenant>:<scope id>"),
-- atomically with it, so every replica's cache drops what changed.
-- Then the audit event's three ARGV (audit.lua).
-- The last ARGV is the caller's deadline in microseconds: a write that reaches Redis after
-- its caller gave up (a paused or overloaded Redis) is refused, so a timed-out call never
-- applies later.
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, kid, expected = ARGV[1], ARGV[2], ARGV[3]
if not judged(base) then return {'stale'} end
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local rec = base .. 'key:' .. kid
local cur = redis.call('HGET', rec, 'v')
if expected == '' then
  if cur then return {'exists'} end
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return {'quota'} end
else
  if not cur then return {'notfound'} end
  if cur ~= expected then return {'conflict', cur} end
end
for i = 1, tonumber(ARGV[9]) do
  local sid = ARGV[9 + i]
  if redis.call('EXISTS', base .. 'scope:' .. sid) == 0 then return {'scopemissing', sid} end
end
if cur then
  local old = redis.call('HGET', rec, 'scopes') or ''
  for sid in string.gmatch(old, '[^,]+') do redis.call('ZREM', base .. 'holders:' .. sid, kid) end
end
for sid in string.gmatch(ARGV[6], '[^,]+') do redis.call('ZADD', base .. 'holders:' .. sid, 0, kid) end
redis.call('ZADD', KEYS[1], 0, kid)
redis.call('HSET', rec, 'v', ARGV[5], 'scopes', ARGV[6], 'updated', ARGV[7], 'body', ARGV[8])
redis.call('PUBLISH', chan, 'k:' .. kid)
audit(base)
return {'ok'}
