-- delete: remove a task that is not active (scheduled, pending, retry, dead, completed or
-- cancelled): its record, its entry in its state's zset or stream (a completed task's processed
-- marker too) and its unique key. An active task is running: it is left alone.
-- KEYS: streams, tasks, scheduled, retry, dead, completed, cancelled, unique, unique_exp
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 completed_ttl_ms, 4 dead_ttl_ms, 5 task id
-- Returns 1 if deleted, 0 (no change) for an active task, -1 for no such task (none, a record
-- whose header does not parse, or one whose retention ended: that one is removed now).
--#include lib/record.lua
--#include lib/history.lua
local now, group, id = clock(ARGV[1]), ARGV[2], ARGV[5]
local h = parse(redis.call('HGET', K.tasks, id))
if not h then return -1 end
if h.state == 'a' then return 0 end
local place = ({s = K.scheduled, r = K.retry, d = K.dead, c = K.completed, x = K.cancelled})[h.state]
if h.state == 'p' then
  unlink(KEYS[1 + h.priority], group, h.sid)
elseif place then
  redis.call('ZREM', place, id)
end
release_unique(K.unique, K.unique_exp, h.unique, id)
redis.call('HDEL', K.tasks, id)
history(id, 'g', now)
if expired(h, now, ARGV[3], ARGV[4]) then return -1 end
return 1
