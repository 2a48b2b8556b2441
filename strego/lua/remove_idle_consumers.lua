-- remove_idle_consumers: forget consumers idle longer than idle_ms (by the backend's clock) that
-- hold no active task, in the consumers hash and in every stream's group. Bounded: looks at one
-- HSCAN batch of the consumers hash (about `count` names) from `cursor`, and tells a holder by
-- its own entries in the groups' pending lists (XPENDING ... 1 consumer: one seek per stream),
-- never by reading every lease.
-- KEYS: streams, consumers
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 idle_ms, 4 HSCAN cursor ('0' = from the start), 5 count
-- Returns {next HSCAN cursor ('0' = the scan went round), {names removed}}.
--#include lib/clock.lua
local now, group, idle = tonumber(clock(ARGV[1])), ARGV[2], tonumber(ARGV[3])

-- Does `name` hold a delivered entry (an active task) in any stream's group?
local function holds(name)
  for prio = 0, 10 do
    local stream = KEYS[1 + prio]
    if redis.call('EXISTS', stream) == 1 then
      local mine = redis.pcall('XPENDING', stream, group, '-', '+', 1, name)
      if not mine.err and #mine > 0 then return true end
    end
  end
  return false
end

local scan = redis.call('HSCAN', K.consumers, ARGV[4], 'COUNT', ARGV[5])
local batch, removed = scan[2], {}
for i = 1, #batch, 2 do
  local name, seen = batch[i], tonumber(batch[i + 1])
  if seen and now - seen > idle and not holds(name) then
    redis.call('HDEL', K.consumers, name)
    for prio = 0, 10 do
      if redis.call('EXISTS', KEYS[1 + prio]) == 1 then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1 + prio], group, name)
      end
    end
    removed[#removed + 1] = name
  end
end
return {scan[1], removed}
