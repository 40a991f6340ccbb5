-- Shared by the check-path reads (prepended to credential.lua and principal_grants.lua): appends
-- to `out`, for each of `ids` stored as a scope under `base`, its id, version, label and body.
-- Ids of scopes that are not stored (builtins, or deleted meanwhile) add nothing.
local function append_scope_records(out, base, ids)
  for _, sid in ipairs(ids) do
    local s = redis.call('HMGET', base .. 'scope:' .. sid, 'v', 'label', 'body')
    if s[1] then
      table.insert(out, sid)
      table.insert(out, s[1])
      table.insert(out, s[2])
      table.insert(out, s[3])
    end
  end
end
