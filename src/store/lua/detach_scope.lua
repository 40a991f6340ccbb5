-- A batch of a forced scope delete: takes the scope from the keys given, each of which must
-- still hold it at the version given, and leaves the scope, its bindings and its other
-- holders as they are. The service gives at most DETACH_BATCH keys (src/store/mod.rs), so
-- the script's time does not grow with the number of holders.
-- KEYS[1] tenant scope set. ARGV: base, scope id, now, the access version the delete was
-- judged against ('' = not guarded), n keys, then key id and version for each key.
-- A judged change: refused unless the tenant's access version is the one given, and moves it
-- on; returns {'ok', <access version after>}. It records no audit event: the delete's last
-- write (delete_scope.lua) records the one event of the whole delete.
-- The last ARGV is the caller's deadline in microseconds (a late write is refused).
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, sid, now, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local access = base .. 'access'
if expected ~= '' and (redis.call('GET', access) or '0') ~= expected then return {'stale'} end
if redis.call('EXISTS', base .. 'scope:' .. sid) == 0 then return {'notfound'} end
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local holders = base .. 'holders:' .. sid
local n = tonumber(ARGV[5])
for i = 0, n - 1 do
  local kid = ARGV[6 + 2 * i]
  if not redis.call('ZSCORE', holders, kid) then return {'users'} end
  if redis.call('HGET', base .. 'key:' .. kid, 'v') ~= ARGV[7 + 2 * i] then return {'users'} end
end
for i = 0, n - 1 do detach(base, chan, sid, ARGV[6 + 2 * i], now) end
if expected == '' then return {'ok', redis.call('GET', access) or '0'} end
return {'ok', tostring(redis.call('INCR', access))}
