-- A key record and the records of the stored scopes it names, read together (one round trip).
-- KEYS[1] the key record. ARGV: base.
-- Returns {} or {v, scopes, updated, body, then per found scope: id, v, label, body}.
local f = redis.call('HMGET', KEYS[1], 'v', 'scopes', 'updated', 'body')
if not f[1] then return {} end
local out = {f[1], f[2], f[3], f[4]}
local ids = {}
for sid in string.gmatch(f[2] or '', '[^,]+') do table.insert(ids, sid) end
append_scope_records(out, ARGV[1], ids)
return out
