-- A key record and the records of the stored scopes it names, read together (one round trip).
-- KEYS[1] the key record. ARGV: base.
-- Returns {} or {v, scopes, updated, body, then per found scope: id, v, label, body}.
local f = redis.call('HMGET', KEYS[1], 'v', 'scopes', 'updated', 'body')
if not f[1] then return {} end
local out = {f[1], f[2], f[3], f[4]}
for sid in string.gmatch(f[2] or '', '[^,]+') do
  local s = redis.call('HMGET', ARGV[1] .. 'scope:' .. sid, 'v', 'label', 'body')
  if s[1] then
    table.insert(out, sid)
    table.insert(out, s[1])
    table.insert(out, s[2])
    table.insert(out, s[3])
  end
end
return out
