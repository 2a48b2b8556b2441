-- cancel: scheduled, pending or retry -> cancelled (never retried or dead-lettered), releasing
-- the unique key.
-- KEYS: streams, tasks, scheduled, retry, cancelled, unique, unique_exp
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 task id
-- Returns 1 if cancelled, 0 (no change) for a task in another state or unknown.
--#include lib/record.lua
--#include lib/history.lua
local now, group, id = clock(ARGV[1]), ARGV[2], ARGV[3]
local h = parse(redis.call('HGET', K.tasks, id))
if not h then return 0 end
if h.state == 's' then
  redis.call('ZREM', K.scheduled, id)
elseif h.state == 'r' then
  redis.call('ZREM', K.retry, id)
elseif h.state == 'p' then
  unlink(KEYS[1 + h.priority], group, h.sid)
else
  return 0
end
release_unique(K.unique, K.unique_exp, h.unique, id)
h.state, h.ended, h.due, h.sid = 'x', now, '', ''
redis.call('HSET', K.tasks, id, build(h))
redis.call('ZADD', K.cancelled, now, id)
history(id, 'x', now, h.retried)
return 1
