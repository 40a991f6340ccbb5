-- Undoes a bootstrap claim whose token could never be shown: removes the key, its indexes and
-- the bootstrap marker together, only while the marker names the key and the key is still at
-- the version claimed (else 'other' or 'changed', and nothing is written).
-- KEYS[1] tenant key set. ARGV: base, key id, version. Then the audit event's three ARGV
-- (audit.lua). The last ARGV is the caller's deadline in microseconds (see claim_bootstrap.lua).
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[#ARGV]) then return {'expired'} end
local base, kid = ARGV[1], ARGV[2]
local chan = string.match(base, '^([^{]*):{') .. ':changes'
local marker = base .. 'bootstrap'
if redis.call('GET', marker) ~= kid then return {'other'} end
local rec = base .. 'key:' .. kid
if redis.call('HGET', rec, 'v') ~= ARGV[3] then return {'changed'} end
local scopes = redis.call('HGET', rec, 'scopes') or ''
for sid in string.gmatch(scopes, '[^,]+') do redis.call('ZREM', base .. 'holders:' .. sid, kid) end
redis.call('ZREM', KEYS[1], kid)
redis.call('ZREM', base .. 'used', kid)
redis.call('DEL', rec, marker)
redis.call('PUBLISH', chan, 'k:' .. kid)
audit(base)
return {'ok'}
