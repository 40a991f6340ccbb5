-- Creates or replaces a scope record; labels stay unique per tenant (folded to lowercase).
-- KEYS[1] tenant scope set. ARGV: base, scope id, expected version ('' = create), max scopes,
-- new version, label, folded label, body, n reserved labels, reserved folded labels...
-- Every change is published on `<prefix>:changes` ("k:<key id>", "s:<tenant>:<scope id>"),
-- atomically with it, so every replica's cache drops what changed.
-- Then the audit event's three ARGV (audit.lua).
-- The last ARGV is the caller's deadline in microseconds: a write that reaches Redis after
-- its caller gave up (a paused or overloaded Redis) is refused, so a timed-out call never
-- applies later.
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, sid, expected = ARGV[1], ARGV[2], ARGV[3]
if not judged(base) then return {'stale'} end
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local tenant = string.match(base, '{(.*)}')
local rec = base .. 'scope:' .. sid
local cur = redis.call('HGET', rec, 'v')
if expected == '' then
  if cur then return {'exists'} end
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return {'quota'} end
else
  if not cur then return {'notfound'} end
  if cur ~= expected then return {'conflict', cur} end
end
local folded = ARGV[7]
for i = 1, tonumber(ARGV[9]) do
  if ARGV[9 + i] == folded then return {'labeltaken'} end
end
local labels = base .. 'labels'
local owner = redis.call('HGET', labels, folded)
if owner and owner ~= sid then return {'labeltaken'} end
if cur then
  local old = redis.call('HGET', rec, 'folded')
  if old then redis.call('HDEL', labels, old) end
end
redis.call('HSET', labels, folded, sid)
redis.call('ZADD', KEYS[1], 0, sid)
redis.call('HSET', rec, 'v', ARGV[5], 'label', ARGV[6], 'folded', folded, 'body', ARGV[8])
redis.call('PUBLISH', chan, 's:' .. tenant .. ':' .. sid)
audit(base)
return {'ok'}
