-- oldest_pending: a read, no write: how long ago the queue's oldest pending task became
-- pending. A priority stream holds the active tasks' entries (delivered to the group) and the
-- pending ones (after the group's last-delivered id), each entry stamped when its task became
-- pending (see push in lib/record.lua); the oldest pending one is the first undelivered entry of
-- some stream. Bounded: three commands per priority.
-- KEYS: streams
-- ARGV: 1 now ('' = Redis TIME), 2 group
-- Returns the age in ms (0 at least), or -1 when no task is pending.
--#include lib/clock.lua
local now, group = tonumber(clock(ARGV[1])), ARGV[2]
local oldest = nil
for i = 1, 11 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local last = '0-0'
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      local fields = {}
      for f = 1, #g, 2 do fields[g[f]] = g[f + 1] end
      if fields['name'] == group then last = fields['last-delivered-id'] end
    end
    local first = redis.call('XRANGE', KEYS[i], '(' .. last, '+', 'COUNT', 1)[1]
    if first then
      local ms = tonumber(string.match(first[1], '^(%d+)'))
      if oldest == nil or ms < oldest then oldest = ms end
    end
  end
end
if oldest == nil then return -1 end
return math.max(0, now - oldest)
