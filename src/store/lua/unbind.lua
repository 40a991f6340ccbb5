-- Shared by set_members.lua and delete_scope.lua (prepended): takes scope `sid` out of the
-- subject -> scopes and role -> scopes indexes (`bound:s:<subject>`, `bound:r:<role>`) for
-- every subject and role its members hash `mrec` binds it to.
local function unbind(base, sid, mrec)
  local bound = redis.call('HMGET', mrec, 'subjects', 'roles')
  for s in string.gmatch(bound[1] or '', '[^\n]+') do redis.call('SREM', base .. 'bound:s:' .. s, sid) end
  for r in string.gmatch(bound[2] or '', '[^\n]+') do redis.call('SREM', base .. 'bound:r:' .. r, sid) end
end
