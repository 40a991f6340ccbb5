-- Everything a check needs about a principal, in one round trip: its record (or whether it
-- was deleted), the ids of the scopes bound to its subject, to the roles given or to the
-- roles it holds, and the records of those scopes that are stored.
-- ARGV: base, subject, roles given...
-- Returns {state ('none' | 'gone' | 'reg'), v, roles, body, n ids, ids..., then per stored
-- scope: id, v, label, body}.
local base, subject = ARGV[1], ARGV[2]
local p = redis.call('HMGET', base .. 'principal:' .. subject, 'v', 'roles', 'body')
local state = 'none'
if p[1] then
  state = 'reg'
elseif redis.call('SISMEMBER', base .. 'gone', subject) == 1 then
  state = 'gone'
end
local ids = {}
local seen = {}
local function add(set)
  for _, sid in ipairs(redis.call('SMEMBERS', set)) do
    if not seen[sid] then
      seen[sid] = true
      table.insert(ids, sid)
    end
  end
end
add(base .. 'bound:s:' .. subject)
for i = 3, #ARGV do add(base .. 'bound:r:' .. ARGV[i]) end
if p[1] then
  for r in string.gmatch(p[2] or '', '[^\n]+') do add(base .. 'bound:r:' .. r) end
end
local out = {state, p[1] or '', p[2] or '', p[3] or '', tostring(#ids)}
for _, sid in ipairs(ids) do table.insert(out, sid) end
append_scope_records(out, base, ids)
return out
