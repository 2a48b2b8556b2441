-- release: active -> pending (a fresh stream entry) for tasks held by `consumer`, without
-- counting a failure (graceful shutdown).
-- KEYS: streams, tasks, leases, consumers, ready
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4.. task ids
-- Returns how many were released.
--#include lib/record.lua
--#include lib/ready.lua
--#include lib/history.lua
local group, consumer = ARGV[2], ARGV[3]
local refused = ready_refused(K.ready)  -- before any write
if refused then return refused end
redis.call('HSET', K.consumers, consumer, clock(ARGV[1]))
local n = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local h = parse(redis.call('HGET', K.tasks, id))
  if h and h.state == 'a' and h.consumer == consumer then
    local stream = KEYS[1 + h.priority]
    unlink(stream, group, h.sid)
    redis.call('ZREM', K.leases, id)
    h.state, h.consumer = 'p', ''
    h.sid = push(stream, group, id)
    redis.call('HSET', K.tasks, id, build(h))
    n = n + 1
    if HISTORY then history(id, 'p', clock(ARGV[1]), h.retried) end
  end
end
if n > 0 then ready_moved() end
return n
