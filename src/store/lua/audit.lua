-- Shared by every mutation script (prepended to it): appends the change's audit event to the
-- tenant's stream `<base>audit` (same hash slot as the change), keeping its newest events.
-- The three ARGV before the deadline: the event's time in milliseconds, how many events to
-- keep (exact MAXLEN), and the event body. Ids are `<ms>-<seq>` and always grow: an event
-- timed at or before the stream's last one takes the next sequence number of that one.
local function audit(base)
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
