-- Shared by delete_scope.lua and detach_scope.lua (prepended): takes scope `sid` from key
-- `kid` (its record and the scope -> keys index), bumping the key's version and setting its
-- `updated` to `now`, and publishes "k:<key id>" on `chan` atomically with it.
local function detach(base, chan, sid, kid, now)
  local krec = base .. 'key:' .. kid
  local kept = {}
  for s in string.gmatch(redis.call('HGET', krec, 'scopes') or '', '[^,]+') do
    if s ~= sid then table.insert(kept, s) end
  end
  redis.call('HSET', krec, 'scopes', table.concat(kept, ','), 'updated', now)
  redis.call('HINCRBY', krec, 'v', 1)
  redis.call('ZREM', base .. 'holders:' .. sid, kid)
  redis.call('PUBLISH', chan, 'k:' .. kid)
end
