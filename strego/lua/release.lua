-- release: active -> pending (a fresh stream entry) for tasks held by `consumer`, without
-- counting a failure (graceful shutdown).
-- KEYS: 1 tasks, 2 leases, 3 consumers, 4..14 stream for priority 0..10, 15 ready (INCRed once
--       when any task was released)
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4.. task ids
-- Returns how many were released.
--#include lib/record.lua
local group, consumer = ARGV[2], ARGV[3]
redis.call('GET', KEYS[15])  -- a foreign ready key fails here, before any write
redis.call('HSET', KEYS[3], consumer, clock(ARGV[1]))
local n = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local h = parse(redis.call('HGET', KEYS[1], id))
  if h and h.state == 'a' and h.consumer == consumer then
    local stream = KEYS[4 + h.priority]
    unlink(stream, group, h.sid)
    redis.call('ZREM', KEYS[2], id)
    h.state, h.consumer = 'p', ''
    h.sid = push(stream, group, id)
    redis.call('HSET', KEYS[1], id, build(h))
    n = n + 1
  end
end
if n > 0 then redis.call('INCR', KEYS[15]) end
return n
