-- remove_idle_consumers: forget consumers idle longer than idle_ms (by the backend's clock) that
-- hold no active task, in the consumers hash and in every stream's group.
-- KEYS: 1 tasks, 2 leases, 3 consumers, 4..14 stream for priority 0..10
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 idle_ms
-- Returns the names removed.
--#include lib/record.lua
local now, group, idle = tonumber(clock(ARGV[1])), ARGV[2], tonumber(ARGV[3])
local holding = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local h = parse(redis.call('HGET', KEYS[1], id))
  if h and h.state == 'a' then holding[h.consumer] = true end
end
local removed = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local name, seen = all[i], tonumber(all[i + 1])
  if now - seen > idle and not holding[name] then
    redis.call('HDEL', KEYS[3], name)
    for prio = 0, 10 do
      if redis.call('EXISTS', KEYS[4 + prio]) == 1 then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[4 + prio], group, name)
      end
    end
    removed[#removed + 1] = name
  end
end
return removed
