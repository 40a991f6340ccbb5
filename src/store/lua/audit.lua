-- Shared by every mutation script (prepended to it): appends the change's audit event to the
-- tenant's stream `<base>audit` (same hash slot as the change), keeping its newest events,
-- and, for a judged change, moves the tenant's access version `<base>access` on by one.
-- The four ARGV before the deadline: the access version the change was judged against ('' =
-- not guarded), the event's time in milliseconds, how many events to keep (exact MAXLEN), and
-- the event body. Ids are `<ms>-<seq>` and always grow: an event timed at or before the
-- stream's last one takes the next sequence number of that one.
local function judged(base)
  local expected = ARGV[#ARGV - 4]
  if expected == '' then return true end
  return (redis.call('GET', base .. 'access') or '0') == expected
end

local function audit(base)
  -- Only a judged change moves the version: an unjudged one (a disable, a revoke, a policy)
  -- never widens access, so a change judged meanwhile stays right.
  if ARGV[#ARGV - 4] ~= '' then redis.call('INCR', base .. 'access') end
  local stream = base .. 'audit'
  local ms, keep, body = ARGV[#ARGV - 3], ARGV[#ARGV - 2], ARGV[#ARGV - 1]
  local id = ms .. '-0'
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if last then
    local lms, lseq = string.match(last[1], '^(%d+)-(%d+)$')
    if #lms > #ms or (#lms == #ms and lms >= ms) then id = lms .. '-' .. string.format('%d', tonumber(lseq) + 1) end
  end
  redis.call('XADD', stream, 'MAXLEN', keep, id, 'e', body)
end
