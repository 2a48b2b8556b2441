-- cancel: scheduled, pending or retry -> cancelled (never retried or dead-lettered), releasing
-- the unique key.
-- KEYS: 1 tasks, 2 scheduled, 3 retry, 4 cancelled, 5 unique, 6 unique_exp,
--       7..17 stream for priority 0..10
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 task id
-- Returns 1 if cancelled, 0 (no change) for a task in another state or unknown.
--#include lib/record.lua
local now, group, id = clock(ARGV[1]), ARGV[2], ARGV[3]
local h = parse(redis.call('HGET', KEYS[1], id))
if not h then return 0 end
if h.state == 's' then
  redis.call('ZREM', KEYS[2], id)
elseif h.state == 'r' then
  redis.call('ZREM', KEYS[3], id)
elseif h.state == 'p' then
  unlink(KEYS[7 + h.priority], group, h.sid)
else
  return 0
end
release_unique(KEYS[5], KEYS[6], h.unique, id)
h.state, h.ended, h.due, h.sid = 'x', now, '', ''
redis.call('HSET', KEYS[1], id, build(h))
redis.call('ZADD', KEYS[4], now, id)
return 1
